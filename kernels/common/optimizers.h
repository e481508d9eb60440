/* Fused optimizer updates: one pass over a parameter, its gradient and its state buffers,
 * in place (gpumat/optimizers.py).  Written once for OpenCL C and CUDA C++ (dialect.h);
 * instantiated per precision by the including file, which defines OPT_T (float or double)
 * and OPT_SUFFIX (_f32 or _f64).  Grid-stride loops: any 1-d launch covers any n.
 *
 * The arithmetic follows torch.optim's single-tensor rules step by step, so a model
 * trained with gpumat's SGD or Adam follows PyTorch's trajectory to float rounding.
 */
#include "dialect.h"

#define OPT_CAT_(a, b) a##b
#define OPT_CAT(a, b) OPT_CAT_(a, b)
#define OPT_NAME(name) OPT_CAT(name, OPT_SUFFIX)

/* SGD with momentum, dampening, Nesterov and L2 weight decay:
 *   d = g + weight_decay * p
 *   buf = first ? d : momentum * buf + (1 - dampening) * d      (only when momentum != 0)
 *   d = nesterov ? d + momentum * buf : buf                     (only when momentum != 0)
 *   p = p - lr * d
 * buf may alias nothing else; it is neither read nor written when momentum == 0. */
KERNEL void OPT_NAME(sgd_update)(GLOBAL OPT_T *RESTRICT p, GLOBAL const OPT_T *RESTRICT g,
                                 GLOBAL OPT_T *RESTRICT buf, i64 n, OPT_T lr, OPT_T momentum,
                                 OPT_T dampening, OPT_T weight_decay, i64 nesterov, i64 first)
{
    for (i64 i = GLOBAL_ID_0; i < n; i += GLOBAL_SIZE_0) {
        OPT_T d = g[i] + weight_decay * p[i];
        if (momentum != (OPT_T)0) {
            const OPT_T b = first ? d : momentum * buf[i] + ((OPT_T)1 - dampening) * d;
            buf[i] = b;
            d = nesterov ? d + momentum * b : b;
        }
        p[i] = p[i] - lr * d;
    }
}

/* Adam / AdamW, step t >= 1:
 *   decoupled: p = p * (1 - lr * weight_decay)     else: g = g + weight_decay * p
 *   m = m + (1 - beta1) * (g - m)                  (torch's lerp)
 *   v = beta2 * v + (1 - beta2) * g * g
 *   p = p - step_size * m / (sqrt(v) / bias2_sqrt + eps)
 * with step_size = lr / (1 - beta1^t) and bias2_sqrt = sqrt(1 - beta2^t) computed by the
 * host in double precision. */
KERNEL void OPT_NAME(adam_update)(GLOBAL OPT_T *RESTRICT p, GLOBAL const OPT_T *RESTRICT g,
                                  GLOBAL OPT_T *RESTRICT m, GLOBAL OPT_T *RESTRICT v, i64 n,
                                  OPT_T lr, OPT_T beta1, OPT_T beta2, OPT_T eps,
                                  OPT_T weight_decay, i64 decoupled, OPT_T step_size,
                                  OPT_T bias2_sqrt)
{
    for (i64 i = GLOBAL_ID_0; i < n; i += GLOBAL_SIZE_0) {
        OPT_T w = p[i];
        OPT_T grad = g[i];
        if (decoupled)
            w = w * ((OPT_T)1 - lr * weight_decay);
        else
            grad = grad + weight_decay * w;
        const OPT_T mi = m[i] + ((OPT_T)1 - beta1) * (grad - m[i]);
        const OPT_T vi = beta2 * v[i] + ((OPT_T)1 - beta2) * grad * grad;
        m[i] = mi;
        v[i] = vi;
        p[i] = w - step_size * mi / (sqrt(vi) / bias2_sqrt + eps);
    }
}

#undef OPT_NAME
#undef OPT_CAT
#undef OPT_CAT_
