"""GPU fast paths, imported only from the GPU branch of an op (never at package import):
``cudnn_conv`` (convolution through cuDNN graphs) and ``fused`` (fused CuPy kernels)."""
