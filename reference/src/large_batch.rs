//! The large-batch rules as their papers write them, in f64: Goyal et al. 2017's gradual warmup
//! (Section 2.2) and You, Gitman & Ginsburg 2017's LARS (Algorithm 1).

// lr_t = lr * (s + (1 - s) * t / T) for t < T, lr after; s = reference_batch / batch.
/// Goyal et al.: "start from a learning rate of eta and increment it by a constant amount at
/// each iteration such that it reaches k*eta after [the warmup]", with k = batch /
/// reference_batch and k*eta = `lr`.
pub fn warmup_lr(lr: f64, batch: usize, reference_batch: usize, warmup_steps: u64, t: u64) -> f64 {
    let k = batch as f64 / reference_batch as f64;
    let eta = lr / k;
    if t >= warmup_steps {
        return lr;
    }
    let increment = (lr - eta) / warmup_steps as f64;
    eta + increment * t as f64
}

/// ||v||_2.
pub fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

// local_lr = eta * ||w|| / (||dw|| + beta * ||w||), 1 where a norm is 0
/// Algorithm 1's local learning rate of one layer (`beta` is the weight decay).
pub fn lars_local_lr(w: &[f64], dw: &[f64], eta: f64, beta: f64) -> f64 {
    let (wn, gn) = (norm(w), norm(dw));
    if wn > 0.0 && gn > 0.0 {
        eta * wn / (gn + beta * wn)
    } else {
        1.0
    }
}

// v = m v + lr * local_lr * (dw + beta w) ;  w = w - v   (Algorithm 1, with momentum)
/// One LARS step of one layer: the algorithm's own form, with `v` the velocity of its sign
/// convention (the negative of the paper's `v`).
pub fn lars_update(w: &mut [f64], dw: &[f64], v: &mut [f64], lr: f64, m: f64, beta: f64, eta: f64) {
    assert_eq!(dw.len(), w.len(), "lars_update: dw has the wrong length");
    assert_eq!(v.len(), w.len(), "lars_update: v has the wrong length");
    let local = lars_local_lr(w, dw, eta, beta);
    for i in 0..w.len() {
        v[i] = m * v[i] + lr * local * (dw[i] + beta * w[i]);
        w[i] -= v[i];
    }
}
