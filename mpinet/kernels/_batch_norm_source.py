"""CUDA source of the batch-norm kernels (and the per-channel sum that shares their reduction),
kept apart from the Python wrappers in batch_norm.py so that each file reads on its own.
Templated on the io dtype kind K (see _compile.IO_HEADER); compiled on first use."""
from ._compile import IO_HEADER

BN_SOURCE = IO_HEADER + r"""
// Sum of two values over the block (blockDim.x a multiple of 32, at most 1024).
template <typename A>
__device__ __forceinline__ void block_sum2(A& a, A& b) {
    __shared__ A sa[32], sb[32];
    for (int o = 16; o > 0; o >>= 1) {
        a += __shfl_down_sync(0xffffffffu, a, o);
        b += __shfl_down_sync(0xffffffffu, b, o);
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    if (lane == 0) { sa[warp] = a; sb[warp] = b; }
    __syncthreads();
    if (warp == 0) {
        a = lane < nwarps ? sa[lane] : A(0);
        b = lane < nwarps ? sb[lane] : A(0);
        for (int o = 16; o > 0; o >>= 1) {
            a += __shfl_down_sync(0xffffffffu, a, o);
            b += __shfl_down_sync(0xffffffffu, b, o);
        }
    }
}

// Called by every thread of block (s, c) after block_sum2: thread 0 stores this block's two
// partial sums; the last block of channel c to arrive gets true (in all its threads) and may
// read all S partials of channel c. It must reset counter[c] to 0 for the next launch.
template <typename A>
__device__ __forceinline__ bool arrive_last(A a, A b, A* part, unsigned int* counter,
                                            unsigned int c, unsigned int C) {
    __shared__ bool last;
    unsigned int S = gridDim.x, s = blockIdx.x;
    if (threadIdx.x == 0) {
        part[c * S + s] = a;
        part[C * S + c * S + s] = b;
        __threadfence();
        last = atomicAdd(&counter[c], 1u) == S - 1;
    }
    __syncthreads();
    return last;
}

// For the last block of channel c (after arrive_last): the sums of the S partials of a and b,
// in float64.
template <typename A>
__device__ __forceinline__ void sum_partials(const A* part, unsigned int c, unsigned int C,
                                             double& sa, double& sb) {
    __threadfence();
    const volatile A* vp = part;
    unsigned int S = gridDim.x;
    sa = 0;
    sb = 0;
    for (unsigned int t = 0; t < S; ++t) { sa += vp[c * S + t]; sb += vp[C * S + c * S + t]; }
}

// From the shifted sums sa = sum(x - shift), sb = sum((x - shift)^2) over M values of channel
// c: writes stats[c] = mean, stats[C + c] = 1 / sqrt(biased var + eps) and, with
// update_running, the new running statistics (PyTorch's rule; running_var takes the unbiased
// variance). Returns mean and invstd as stored.
template <typename A>
__device__ __forceinline__ void finish_stats(double sa, double sb, A shift, unsigned int c,
                                             unsigned int C, unsigned int M, double eps,
                                             A* stats, int update_running, double momentum,
                                             const A* rmean, const A* rvar, A* rmean_out,
                                             A* rvar_out, A& mean, A& invstd) {
    double d = sa / M;                       // mean - shift
    double var = fmax(sb / M - d * d, 0.0);  // biased variance, as used to normalise
    mean = (A)((double)shift + d);
    invstd = (A)(1.0 / sqrt(var + eps));
    stats[c] = mean;
    stats[C + c] = invstd;
    if (update_running) {
        rmean_out[c] = (A)((1.0 - momentum) * (double)rmean[c] + momentum * ((double)shift + d));
        rvar_out[c] = (A)((1.0 - momentum) * (double)rvar[c]
                          + momentum * var * ((double)M / (double)(M - 1)));
    }
}

// The gradient that reaches batch norm's output: gy, or with a fused ReLU gy where the saved
// output y > 0, else 0 (exactly the separate relu backward's mask).
template <int K>
__device__ __forceinline__ typename io<K>::A masked_grad(const typename io<K>::T* gy,
                                                         const typename io<K>::T* y, int relu,
                                                         size_t off) {
    typedef typename io<K>::A A;
    A g = io<K>::ld(gy[off]);
    return relu && !(io<K>::ld(y[off]) > A(0)) ? A(0) : g;
}

// Sums of channel c over slice s of j in [0, M), M = N * HW, element j = (n, i) = (j / HW, j % HW).
// Forward: a = sum(x - shift), b = sum((x - shift)^2), shift = x[0, c, 0]; the last block writes
// stats[c] = mean, stats[C + c] = 1 / sqrt(biased var + eps), and with update_running the new
// running statistics (the outputs may be the inputs: one thread reads, then writes). Doing that
// here saves the ~10 small launches per layer that the running-statistics arithmetic costs in
// CuPy.
template <int K>
__global__ void bn_stats(const typename io<K>::T* x, unsigned int C, unsigned int HW,
                         unsigned int M, unsigned int per, typename io<K>::A* part,
                         unsigned int* counter, double eps, typename io<K>::A* stats,
                         int update_running, double momentum, const typename io<K>::A* rmean,
                         const typename io<K>::A* rvar, typename io<K>::A* rmean_out,
                         typename io<K>::A* rvar_out, long long* batches, int count_batch) {
    typedef typename io<K>::A A;
    unsigned int c = blockIdx.y, s = blockIdx.x;
    A shift = io<K>::ld(x[(size_t)c * HW]);
    A a = 0, b = 0;
    unsigned int j1 = min(M, (s + 1) * per);
    for (unsigned int j = s * per + threadIdx.x; j < j1; j += blockDim.x) {
        unsigned int n = j / HW, i = j - n * HW;
        A v = io<K>::ld(x[((size_t)n * C + c) * HW + i]) - shift;
        a += v; b += v * v;
    }
    block_sum2(a, b);
    if (arrive_last(a, b, part, counter, c, C) && threadIdx.x == 0) {
        double sa, sb;
        sum_partials(part, c, C, sa, sb);
        A mean, invstd;
        finish_stats(sa, sb, shift, c, C, M, eps, stats, update_running, momentum, rmean, rvar,
                     rmean_out, rvar_out, mean, invstd);
        if (count_batch && c == 0) batches[0] += 1;  // the layer's num_batches_tracked
        counter[c] = 0;
    }
}

// y = (x - mean[c]) * invstd[c] * gamma[c] + beta[c] over all elements.
template <int K>
__global__ void bn_apply(const typename io<K>::T* x, const typename io<K>::A* mean,
                         const typename io<K>::A* invstd, const typename io<K>::A* gamma,
                         const typename io<K>::A* beta, typename io<K>::T* y,
                         unsigned int total, unsigned int C, unsigned int HW, int relu) {
    typedef typename io<K>::A A;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += gridDim.x * blockDim.x) {
        unsigned int c = (i / HW) % C;
        y[i] = io<K>::st(relu_if((io<K>::ld(x[i]) - mean[c]) * (invstd[c] * gamma[c]) + beta[c],
                                 relu));
    }
}

// Small channels (M <= ONE_BLOCK_MAX elements each): one block per channel computes the
// statistics and applies them in a single launch, as cuDNN's bn_fw_tr_1C11 does: at these sizes
// the host's launch cost, not the GPU, is the limit. Same arithmetic as bn_stats + bn_apply
// (shifted one-pass sums; mean and invstd rounded to A before the apply).
template <int K>
__global__ void bn_fwd_block(const typename io<K>::T* x, unsigned int C, unsigned int HW,
                             unsigned int M, double eps, typename io<K>::A* stats,
                             const typename io<K>::A* gamma, const typename io<K>::A* beta,
                             typename io<K>::T* y, int update_running, double momentum,
                             const typename io<K>::A* rmean, const typename io<K>::A* rvar,
                             typename io<K>::A* rmean_out, typename io<K>::A* rvar_out,
                             long long* batches, int count_batch, int relu) {
    typedef typename io<K>::A A;
    __shared__ A s_mean, s_scale;
    unsigned int c = blockIdx.x;
    A shift = io<K>::ld(x[(size_t)c * HW]);
    A a = 0, b = 0;
    for (unsigned int j = threadIdx.x; j < M; j += blockDim.x) {
        unsigned int n = j / HW, i = j - n * HW;
        A v = io<K>::ld(x[((size_t)n * C + c) * HW + i]) - shift;
        a += v; b += v * v;
    }
    block_sum2(a, b);
    if (threadIdx.x == 0) {
        A mean, invstd;
        finish_stats((double)a, (double)b, shift, c, C, M, eps, stats, update_running, momentum,
                     rmean, rvar, rmean_out, rvar_out, mean, invstd);
        if (count_batch && c == 0) batches[0] += 1;  // the layer's num_batches_tracked
        s_mean = mean;
        s_scale = invstd * gamma[c];
    }
    __syncthreads();
    A mean = s_mean, scale = s_scale, bc = beta[c];
    for (unsigned int j = threadIdx.x; j < M; j += blockDim.x) {
        unsigned int n = j / HW, i = j - n * HW;
        size_t off = ((size_t)n * C + c) * HW + i;
        y[off] = io<K>::st(relu_if((io<K>::ld(x[off]) - mean) * scale + bc, relu));
    }
}

// Backward counterpart of bn_fwd_block (bnb_stats + bnb_apply in one launch).
template <int K>
__global__ void bnb_block(const typename io<K>::T* x, const typename io<K>::T* gy,
                          const typename io<K>::A* mean, const typename io<K>::A* invstd,
                          const typename io<K>::A* gamma, unsigned int C, unsigned int HW,
                          unsigned int M, typename io<K>::A* ggamma, typename io<K>::A* gbeta,
                          typename io<K>::T* gx, typename io<K>::A inv_m,
                          const typename io<K>::T* y, int relu) {
    typedef typename io<K>::A A;
    __shared__ A s_gg, s_gb;
    unsigned int c = blockIdx.x;
    A mu = mean[c];
    A a = 0, b = 0;
    for (unsigned int j = threadIdx.x; j < M; j += blockDim.x) {
        unsigned int n = j / HW, i = j - n * HW;
        size_t off = ((size_t)n * C + c) * HW + i;
        A g = masked_grad<K>(gy, y, relu, off);
        a += g; b += g * (io<K>::ld(x[off]) - mu);
    }
    block_sum2(a, b);
    if (threadIdx.x == 0) {
        A gg = (A)((double)b * (double)invstd[c]), gb = a;
        ggamma[c] = gg;
        gbeta[c] = gb;
        s_gg = gg;
        s_gb = gb;
    }
    __syncthreads();
    A is = invstd[c], gg = s_gg, gb = s_gb, gam = gamma[c];
    for (unsigned int j = threadIdx.x; j < M; j += blockDim.x) {
        unsigned int n = j / HW, i = j - n * HW;
        size_t off = ((size_t)n * C + c) * HW + i;
        A xhat = (io<K>::ld(x[off]) - mu) * is;
        A g = masked_grad<K>(gy, y, relu, off) - (gb + xhat * gg) * inv_m;
        gx[off] = io<K>::st(gam * is * g);
    }
}

// out[c] = sum of x over (N, H, W) for each channel c (a conv bias's gradient): one launch, a
// grid of S slices x C channels, the last block of each channel adding the slices in float64.
template <int K>
__global__ void ch_sum(const typename io<K>::T* x, unsigned int C, unsigned int HW,
                       unsigned int M, unsigned int per, typename io<K>::A* part,
                       unsigned int* counter, typename io<K>::T* out) {
    typedef typename io<K>::A A;
    unsigned int c = blockIdx.y, s = blockIdx.x;
    A a = 0, unused = 0;
    unsigned int j1 = min(M, (s + 1) * per);
    for (unsigned int j = s * per + threadIdx.x; j < j1; j += blockDim.x) {
        unsigned int n = j / HW, i = j - n * HW;
        a += io<K>::ld(x[((size_t)n * C + c) * HW + i]);
    }
    block_sum2(a, unused);
    if (arrive_last(a, unused, part, counter, c, C) && threadIdx.x == 0) {
        double sa, sb_unused;
        sum_partials(part, c, C, sa, sb_unused);
        out[c] = io<K>::st((A)sa);
        counter[c] = 0;
    }
}

// Inference: y = (x - rmean[c]) / sqrt(rvar[c] + eps) * gamma[c] + beta[c].
template <int K>
__global__ void bn_infer(const typename io<K>::T* x, const typename io<K>::A* rmean,
                         const typename io<K>::A* rvar, const typename io<K>::A* gamma,
                         const typename io<K>::A* beta, typename io<K>::A eps,
                         typename io<K>::T* y, unsigned int total, unsigned int C,
                         unsigned int HW, int relu) {
    typedef typename io<K>::A A;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += gridDim.x * blockDim.x) {
        unsigned int c = (i / HW) % C;
        A scale = gamma[c] / sqrt(rvar[c] + eps);
        y[i] = io<K>::st(relu_if((io<K>::ld(x[i]) - rmean[c]) * scale + beta[c], relu));
    }
}

// Backward sums: a = sum(gy), b = sum(gy * (x - mean[c])); the last block writes
// ggamma[c] = b * invstd[c], gbeta[c] = a (separate pointers: they may be the parameters'
// gradient buffers).
template <int K>
__global__ void bnb_stats(const typename io<K>::T* x, const typename io<K>::T* gy,
                          const typename io<K>::A* mean, const typename io<K>::A* invstd,
                          unsigned int C, unsigned int HW, unsigned int M, unsigned int per,
                          typename io<K>::A* part, unsigned int* counter,
                          typename io<K>::A* ggamma, typename io<K>::A* gbeta,
                          const typename io<K>::T* y, int relu) {
    typedef typename io<K>::A A;
    unsigned int c = blockIdx.y, s = blockIdx.x;
    A mu = mean[c];
    A a = 0, b = 0;
    unsigned int j1 = min(M, (s + 1) * per);
    for (unsigned int j = s * per + threadIdx.x; j < j1; j += blockDim.x) {
        unsigned int n = j / HW, i = j - n * HW;
        size_t off = ((size_t)n * C + c) * HW + i;
        A g = masked_grad<K>(gy, y, relu, off);
        a += g; b += g * (io<K>::ld(x[off]) - mu);
    }
    block_sum2(a, b);
    if (arrive_last(a, b, part, counter, c, C) && threadIdx.x == 0) {
        double sa, sb;
        sum_partials(part, c, C, sa, sb);
        ggamma[c] = (A)(sb * (double)invstd[c]);
        gbeta[c] = (A)sa;
        counter[c] = 0;
    }
}

// gx = gamma * invstd * (gy - gbeta / M - xhat * ggamma / M), xhat = (x - mean) * invstd.
template <int K>
__global__ void bnb_apply(const typename io<K>::T* x, const typename io<K>::T* gy,
                          const typename io<K>::A* mean, const typename io<K>::A* invstd,
                          const typename io<K>::A* gamma, const typename io<K>::A* ggamma,
                          const typename io<K>::A* gbeta, typename io<K>::T* gx,
                          unsigned int total, unsigned int C, unsigned int HW,
                          typename io<K>::A inv_m, const typename io<K>::T* y, int relu) {
    typedef typename io<K>::A A;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += gridDim.x * blockDim.x) {
        unsigned int c = (i / HW) % C;
        A is = invstd[c];
        A xhat = (io<K>::ld(x[i]) - mean[c]) * is;
        A g = masked_grad<K>(gy, y, relu, i) - (gbeta[c] + xhat * ggamma[c]) * inv_m;
        gx[i] = io<K>::st(gamma[c] * is * g);
    }
}
"""

BN_KERNELS = ("bn_stats", "bn_apply", "bn_infer", "bnb_stats", "bnb_apply", "bn_fwd_block",
              "bnb_block", "ch_sum")
