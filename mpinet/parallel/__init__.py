"""Data parallelism: joins the comm layer with autograd's grad-ready hooks."""
from .data_parallel import DataParallel
from .sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm

__all__ = ["DataParallel", "SyncBatchNorm", "convert_sync_batchnorm"]
