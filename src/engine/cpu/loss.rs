//! Softmax and the cross-entropy loss of the classifier (small: N x 1000).

use crate::engine::check_len;
use crate::error::{Error, Result};

/// probs = softmax(logits) for one row; returns ln(sum exp(logits - max)) and max, for the loss.
fn softmax_row(logits: &[f32], probs: &mut [f32]) -> (f64, f32) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for (p, &l) in probs.iter_mut().zip(logits) {
        *p = (l - max).exp();
        sum += *p as f64;
    }
    let inv = (1.0 / sum) as f32;
    probs.iter_mut().for_each(|p| *p *= inv);
    (sum.ln(), max)
}

fn check(op: &str, n: usize, classes: usize, logits: usize, probs: usize) -> Result<()> {
    if classes == 0 {
        return Err(Error::shape(op, "zero classes"));
    }
    check_len(op, "logits", logits, n * classes)?;
    check_len(op, "probs", probs, n * classes)
}

// probs[N,K] = softmax(logits[N,K])
pub(super) fn softmax(n: usize, classes: usize, logits: &[f32], probs: &mut [f32]) -> Result<()> {
    check("softmax", n, classes, logits.len(), probs.len())?;
    for (l, p) in logits
        .chunks_exact(classes)
        .zip(probs.chunks_exact_mut(classes))
    {
        softmax_row(l, p);
    }
    Ok(())
}

// loss = mean_n -ln probs[n, label[n]] ; dlogits[N,K] = (probs - onehot(labels)) / N
pub(super) fn softmax_xent(
    n: usize,
    classes: usize,
    logits: &[f32],
    labels: &[u32],
    probs: &mut [f32],
    dlogits: &mut [f32],
) -> Result<f32> {
    const OP: &str = "softmax_xent";
    check(OP, n, classes, logits.len(), probs.len())?;
    check_len(OP, "dlogits", dlogits.len(), n * classes)?;
    check_len(OP, "labels", labels.len(), n)?;
    if n == 0 {
        return Err(Error::shape(OP, "an empty batch has no mean loss"));
    }
    if let Some(bad) = labels.iter().find(|&&l| l as usize >= classes) {
        return Err(Error::shape(
            OP,
            format!("label {bad} is not below {classes} classes"),
        ));
    }
    let inv_n = 1.0 / n as f32;
    let mut loss = 0.0f64;
    let rows = logits
        .chunks_exact(classes)
        .zip(probs.chunks_exact_mut(classes))
        .zip(dlogits.chunks_exact_mut(classes))
        .zip(labels);
    for (((l, p), d), &label) in rows {
        let (log_sum, max) = softmax_row(l, p);
        // -ln p[label] = ln(sum) - (logit - max), exact even where p[label] underflows.
        loss += log_sum - (l[label as usize] - max) as f64;
        for (d, &pv) in d.iter_mut().zip(&*p) {
            *d = pv * inv_n;
        }
        d[label as usize] -= inv_n;
    }
    Ok((loss / n as f64) as f32)
}
