//! One writer thread with group commit, for a store that answers a caller only once its
//! write is durable (the logger's database, the auth service's audit outbox).
//!
//! [`GroupCommit::spawn`] starts a dedicated OS thread that owns whatever the commit closure
//! captures (in practice the only read-write SQLite connection). The thread blocks for one
//! request, then takes whatever else is already queued, up to `max_batch`, and hands the
//! lot to the closure in one call, so N concurrent callers share one transaction and one
//! disk sync instead of paying for N. Every caller of a batch is answered only after the
//! closure returns, with its own response or with the batch's error.
//!
//! This module knows nothing of SQLite: the root crate does not link it, and the two stores
//! differ only in what a commit does.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

/// Why a submitted request got no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError<E> {
    /// The writer has stopped (or is stopping): the request was not committed.
    #[error("the writer has stopped")]
    Stopped,
    /// The commit of the request's batch failed; nothing in that batch was committed.
    #[error("{0}")]
    Commit(E),
    /// The commit closure returned fewer responses than it was given requests (a bug in
    /// the closure); whether this request was committed is unknown.
    #[error("the writer gave no answer for this request")]
    Unanswered,
}

/// Why [`GroupCommit::stop`] could not confirm a clean stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StopError {
    /// The writer thread panicked (in the commit closure); callers of its last batch
    /// heard [`SubmitError::Stopped`].
    #[error("the writer thread panicked")]
    Panicked,
    /// The thread was still committing when the limit passed; it goes on in the background.
    #[error("the writer thread did not stop within {0:?}")]
    TimedOut(Duration),
}

/// Where one caller's outcome goes.
type Reply<Resp, E> = oneshot::Sender<Result<Resp, SubmitError<E>>>;

/// What the writer thread receives.
enum Message<Req, Resp, E> {
    Submit(Req, Reply<Resp, E>),
    /// Finish what is queued, refuse anything later, and exit.
    Stop,
}

/// A handle to one group-commit writer thread. Cheap to clone; the thread exits once
/// [`stop`](Self::stop) is called or every handle is dropped, in both cases after
/// committing what was already queued.
pub struct GroupCommit<Req, Resp, E> {
    /// Bounded, so callers wait in `send` (backpressure) instead of piling up memory when
    /// the disk is slower than the requests.
    queue: mpsc::Sender<Message<Req, Resp, E>>,
    /// Turns true when the thread has finished and dropped the commit closure (and so
    /// closed its connection). A watch, not a join handle: any clone can wait for it from
    /// async code without holding a blocking thread, and a panic shows as the sender
    /// dropped while still false.
    finished: watch::Receiver<bool>,
}

impl<Req, Resp, E> Clone for GroupCommit<Req, Resp, E> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            finished: self.finished.clone(),
        }
    }
}

impl<Req, Resp, E> std::fmt::Debug for GroupCommit<Req, Resp, E> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("GroupCommit")
            .field("finished", &*self.finished.borrow())
            .finish_non_exhaustive()
    }
}

impl<Req, Resp, E> GroupCommit<Req, Resp, E>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    E: Clone + Send + 'static,
{
    /// Starts the writer thread, named `thread_name`, with room for `queue_capacity` waiting
    /// requests and at most `max_batch` requests per commit (both at least 1).
    ///
    /// `commit` gets each batch in arrival order and must return one response per request,
    /// in the same order, only once the batch is durable; an `Err` means nothing in the
    /// batch was committed, and every caller of the batch receives a clone of it. The
    /// closure owns the thread's state (e.g. a connection), which is dropped on the thread
    /// before [`stop`](Self::stop) returns.
    pub fn spawn<F>(
        thread_name: &str,
        queue_capacity: usize,
        max_batch: usize,
        commit: F,
    ) -> std::io::Result<Self>
    where
        F: FnMut(Vec<Req>) -> Result<Vec<Resp>, E> + Send + 'static,
    {
        let (queue, receiver) = mpsc::channel(queue_capacity.max(1));
        let (finished_sender, finished) = watch::channel(false);
        let max_batch = max_batch.max(1);
        std::thread::Builder::new()
            .name(thread_name.to_owned())
            .spawn(move || {
                write_loop(receiver, max_batch, commit);
                // Only reached without a panic: a panic drops the sender still false.
                finished_sender.send_replace(true);
            })?;
        Ok(Self { queue, finished })
    }

    /// Queues `request` and answers once its batch is committed. Waits for room when the
    /// queue is full. Once queued, a request is committed even if the caller stops waiting.
    pub async fn submit(&self, request: Req) -> Result<Resp, SubmitError<E>> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Message::Submit(request, reply))
            .await
            .map_err(|_| SubmitError::Stopped)?;
        // A dropped reply means the thread died before answering (a panicking commit).
        answer.await.unwrap_or(Err(SubmitError::Stopped))
    }

    /// Asks the thread to commit what is queued and exit, then waits (at most `limit`) until
    /// it has and has dropped its state. Submits queued after the stop request are refused
    /// with [`SubmitError::Stopped`]. Safe to call from any clone, any number of times.
    pub async fn stop(&self, limit: Duration) -> Result<(), StopError> {
        let mut finished = self.finished.clone();
        let stopped = async {
            // Err: the thread has already closed its queue, so it is stopping anyway. A full
            // queue delays Stop only briefly, as the thread drains it continuously.
            let _ = self.queue.send(Message::Stop).await;
            finished
                .wait_for(|finished| *finished)
                .await
                .map(drop)
                .map_err(|_| StopError::Panicked)
        };
        tokio::time::timeout(limit, stopped)
            .await
            .unwrap_or(Err(StopError::TimedOut(limit)))
    }
}

/// The writer thread: commits batches until told to stop or until every handle is gone,
/// then drops `commit` (and the state it owns) before returning.
fn write_loop<Req, Resp, E, F>(
    mut queue: mpsc::Receiver<Message<Req, Resp, E>>,
    max_batch: usize,
    mut commit: F,
) where
    E: Clone,
    F: FnMut(Vec<Req>) -> Result<Vec<Resp>, E>,
{
    let mut replies: Vec<Reply<Resp, E>> = Vec::with_capacity(max_batch);
    // Block for the first request, then take what else is already queued: the requests
    // that arrived while the previous batch was syncing. None: every handle is gone, or
    // Stop closed the queue and it is now empty.
    while let Some(first) = queue.blocking_recv() {
        let mut requests = Vec::with_capacity(max_batch);
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Submit(request, reply) => {
                    requests.push(request);
                    replies.push(reply);
                }
                // Later sends fail at once; what is already queued is still committed.
                Message::Stop => queue.close(),
            }
            if requests.len() < max_batch {
                next = queue.try_recv().ok();
            }
        }
        if requests.is_empty() {
            continue;
        }
        let batch_size = requests.len();
        // The caller may have gone away; what was committed stays committed regardless.
        match commit(requests) {
            Ok(responses) => {
                if responses.len() != batch_size {
                    tracing::error!(
                        requests = batch_size,
                        responses = responses.len(),
                        "a group commit answered the wrong number of requests"
                    );
                }
                let mut responses = responses.into_iter();
                for reply in replies.drain(..) {
                    let _ = reply.send(responses.next().ok_or(SubmitError::Unanswered));
                }
            }
            Err(error) => {
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(SubmitError::Commit(error.clone())));
                }
            }
        }
    }
    // Explicit, for the order: the state (a connection) closes before `finished` is set.
    drop(commit);
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc as std_mpsc,
    };

    use super::*;

    /// Bound on every wait in these tests.
    const TIMEOUT: Duration = Duration::from_secs(10);

    /// A commit closure the test controls: it reports each batch, then waits for the test
    /// to release it, so requests pile up in the queue meanwhile.
    struct Gated {
        batches: mpsc::UnboundedReceiver<Vec<u32>>,
        release: std_mpsc::Sender<Result<(), String>>,
        /// Set when the closure (the thread's state) has been dropped.
        dropped: Arc<AtomicBool>,
    }

    /// Sets its flag when dropped, standing in for a connection the thread owns.
    struct DropFlag(Arc<AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// A writer whose commit answers `request * 10`, or the error the test releases it with.
    fn gated(max_batch: usize) -> (GroupCommit<u32, u32, String>, Gated) {
        let (batches_sender, batches) = mpsc::unbounded_channel();
        let (release, released) = std_mpsc::channel::<Result<(), String>>();
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = DropFlag(Arc::clone(&dropped));
        let writer = GroupCommit::spawn("test-writer", 64, max_batch, move |batch: Vec<u32>| {
            let _state = &flag;
            let _ = batches_sender.send(batch.clone());
            released
                .recv_timeout(TIMEOUT)
                .map_err(|_| "never released".to_owned())??;
            Ok(batch.into_iter().map(|request| request * 10).collect())
        })
        .expect("spawn");
        (
            writer,
            Gated {
                batches,
                release,
                dropped,
            },
        )
    }

    impl Gated {
        async fn next_batch(&mut self) -> Vec<u32> {
            tokio::time::timeout(TIMEOUT, self.batches.recv())
                .await
                .expect("a batch in time")
                .expect("writer alive")
        }
    }

    /// Submits `request` from its own task.
    fn submit(
        writer: &GroupCommit<u32, u32, String>,
        request: u32,
    ) -> tokio::task::JoinHandle<Result<u32, SubmitError<String>>> {
        let writer = writer.clone();
        tokio::spawn(async move { writer.submit(request).await })
    }

    /// Submits `request` from its own task and waits until it is queued, so requests
    /// reach the queue in the order this is called. Only while a commit is held at the
    /// gate: an idle writer would take the request at once, and the queue never look fuller.
    async fn submit_queued(
        writer: &GroupCommit<u32, u32, String>,
        request: u32,
    ) -> tokio::task::JoinHandle<Result<u32, SubmitError<String>>> {
        let free = writer.queue.capacity();
        let task = submit(writer, request);
        tokio::time::timeout(TIMEOUT, async {
            while writer.queue.capacity() == free {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("queued in time");
        task
    }

    async fn answer(
        task: tokio::task::JoinHandle<Result<u32, SubmitError<String>>>,
    ) -> Result<u32, SubmitError<String>> {
        tokio::time::timeout(TIMEOUT, task)
            .await
            .expect("answered in time")
            .expect("task")
    }

    /// Requests queued while a commit runs go into the next commit together, in arrival
    /// order, capped at max_batch, and each caller gets its own response.
    #[tokio::test]
    async fn queued_requests_share_one_commit_in_order() {
        let (writer, mut gate) = gated(4);
        let first = submit(&writer, 100);
        assert_eq!(gate.next_batch().await, [100]);
        let mut waiting = Vec::new();
        for request in 0..6 {
            waiting.push(submit_queued(&writer, request).await);
        }
        for _ in 0..3 {
            gate.release.send(Ok(())).expect("release");
        }
        assert_eq!(answer(first).await, Ok(1000));
        assert_eq!(gate.next_batch().await, [0, 1, 2, 3]);
        assert_eq!(gate.next_batch().await, [4, 5]);
        for (request, task) in (0..).zip(waiting) {
            assert_eq!(answer(task).await, Ok(request * 10));
        }
    }

    /// Stop commits everything queued before it, drops the thread's state, then refuses.
    #[tokio::test]
    async fn stop_drains_the_queue_then_refuses() {
        let (writer, mut gate) = gated(64);
        let first = submit(&writer, 1);
        assert_eq!(gate.next_batch().await, [1]);
        let queued = [
            submit_queued(&writer, 2).await,
            submit_queued(&writer, 3).await,
        ];
        let stopping = tokio::spawn({
            let writer = writer.clone();
            async move { writer.stop(TIMEOUT).await }
        });
        gate.release.send(Ok(())).expect("release");
        gate.release.send(Ok(())).expect("release");
        assert_eq!(answer(first).await, Ok(10));
        assert_eq!(gate.next_batch().await, [2, 3]);
        let [second, third] = queued;
        assert_eq!(answer(second).await, Ok(20));
        assert_eq!(answer(third).await, Ok(30));
        let stopped = tokio::time::timeout(TIMEOUT, stopping).await;
        assert_eq!(stopped.expect("in time").expect("task"), Ok(()));
        assert!(
            gate.dropped.load(Ordering::SeqCst),
            "state dropped before stop returned"
        );
        assert_eq!(writer.submit(4).await, Err(SubmitError::Stopped));
        assert_eq!(writer.stop(TIMEOUT).await, Ok(()), "a second stop is fine");
    }

    /// A failed commit reaches every caller of that batch as its error, and the writer goes
    /// on with the next batch.
    #[tokio::test]
    async fn failed_commit_reaches_every_caller_of_the_batch() {
        let (writer, mut gate) = gated(64);
        let first = submit(&writer, 1);
        assert_eq!(gate.next_batch().await, [1]);
        let failing = [
            submit_queued(&writer, 2).await,
            submit_queued(&writer, 3).await,
        ];
        gate.release.send(Ok(())).expect("release");
        assert_eq!(answer(first).await, Ok(10));
        assert_eq!(gate.next_batch().await, [2, 3]);
        gate.release
            .send(Err("disk full".to_owned()))
            .expect("release");
        for task in failing {
            assert_eq!(
                answer(task).await,
                Err(SubmitError::Commit("disk full".to_owned()))
            );
        }
        gate.release.send(Ok(())).expect("release");
        assert_eq!(answer(submit(&writer, 4)).await, Ok(40));
    }

    /// A commit that answers too few requests leaves the rest Unanswered, not hanging.
    #[tokio::test]
    async fn missing_responses_are_unanswered() {
        let writer: GroupCommit<u32, u32, String> =
            GroupCommit::spawn("short-writer", 8, 8, |_batch: Vec<u32>| Ok(Vec::new()))
                .expect("spawn");
        let outcome = tokio::time::timeout(TIMEOUT, writer.submit(1)).await;
        assert_eq!(outcome.expect("in time"), Err(SubmitError::Unanswered));
    }

    /// A panicking commit answers its callers Stopped, refuses later submits, and stop
    /// reports the panic instead of waiting forever.
    #[tokio::test]
    async fn panicking_commit_stops_the_writer() {
        let writer: GroupCommit<u32, u32, String> =
            GroupCommit::spawn("panicking-writer", 8, 8, |_batch: Vec<u32>| {
                panic!("commit failed badly")
            })
            .expect("spawn");
        let outcome = tokio::time::timeout(TIMEOUT, writer.submit(1)).await;
        assert_eq!(outcome.expect("in time"), Err(SubmitError::Stopped));
        assert_eq!(writer.stop(TIMEOUT).await, Err(StopError::Panicked));
        assert_eq!(writer.submit(2).await, Err(SubmitError::Stopped));
    }
}
