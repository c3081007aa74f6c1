//! Leader election: every replica serves HTTP, only the holder of a `coordination.k8s.io`
//! Lease reconciles, and losing the lease stops reconciling at once.

use std::future::Future;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Runs `work` while `leading` says this replica leads; the moment it turns false (or the
/// channel closes, or `shutdown` fires) the work is cancelled and aborted.
pub async fn while_leading<F, Fut>(
    mut leading: watch::Receiver<bool>,
    shutdown: CancellationToken,
    work: F,
) where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        while !*leading.borrow_and_update() {
            tokio::select! {
                changed = leading.changed() => if changed.is_err() { return },
                _ = shutdown.cancelled() => return,
            }
        }
        tracing::info!("holding the controller lease: reconciling");
        let stop = shutdown.child_token();
        let task = tokio::spawn(work(stop.clone()));
        loop {
            tokio::select! {
                changed = leading.changed() => {
                    if changed.is_err() || !*leading.borrow_and_update() {
                        break;
                    }
                }
                _ = shutdown.cancelled() => break,
            }
        }
        stop.cancel();
        task.abort();
        let _ = task.await;
        if shutdown.is_cancelled() {
            return;
        }
        tracing::warn!("lost the controller lease: stopped reconciling");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn reconciles_only_while_leading() {
        let (tx, rx) = watch::channel(false);
        let shutdown = CancellationToken::new();
        let running = Arc::new(AtomicUsize::new(0));
        let ticks = Arc::new(AtomicUsize::new(0));
        let (r, t) = (running.clone(), ticks.clone());
        let leader = tokio::spawn(while_leading(rx, shutdown.clone(), move |stop| {
            let (r, t) = (r.clone(), t.clone());
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                while !stop.is_cancelled() {
                    t.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), 0, "not leading: no work");
        tx.send(true).unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(ticks.load(Ordering::SeqCst) > 0, "leading: working");
        tx.send(false).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let after_loss = ticks.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(
            ticks.load(Ordering::SeqCst),
            after_loss,
            "lost the lease: work stopped"
        );
        tx.send(true).unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(
            running.load(Ordering::SeqCst),
            2,
            "work restarts on regaining the lease"
        );
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(1), leader)
            .await
            .unwrap()
            .unwrap();
    }
}
