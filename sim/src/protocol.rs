//! The store over the simulated network: a worker's store call is a JSON
//! datagram to the database host and its answer one back (one round trip,
//! like a call on a pooled connection), so calls can be delayed, dropped,
//! partitioned or failed like real database calls.

use std::time::Duration;

use dockhand::job::{ClaimedJob, Completion, JobId, JobState, Lease, NewJob, RecordResult};
use dockhand::job::{HeartbeatAnswer, Phase};
use dockhand::store::{
    Activity, BulkAction, BulkFilter, CancelResult, ClaimRequest, Enqueued, Job, JobEvent,
    JobFilter, MemoryStore, QueueStats, Schedule, Store, StoreError, Wakeup, WorkerInfo, WorkerRow,
    WorkerStop,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use turmoil::net::UdpSocket;

use crate::Plant;

/// The database host's port.
pub const PORT: u16 = 7000;
/// Longest request accepted (a datagram's limit).
const MAX_DATAGRAM: usize = 65_507;
/// Room for an answer: the largest (a heartbeat recovering a few claims) is
/// a few KiB. Smaller than a datagram's limit because a buffer is cleared
/// for every call, which showed in the profile at 64 KiB.
const REPLY_ROOM: usize = 16 * 1024;

/// A store call.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// `register_worker`.
    Register(WorkerInfo),
    /// `deregister_worker`.
    Deregister(WorkerStop),
    /// `claim`, with the simulated time it was sent.
    Claim {
        /// The claim.
        request: ClaimRequest,
        /// Simulated time of sending (for the claim-after-signal check).
        sent_at_ms: u64,
    },
    /// `heartbeat`.
    Heartbeat {
        /// Worker.
        worker: String,
        /// Phase.
        phase: Phase,
        /// Leases held.
        leases: Vec<Lease>,
        /// Lease.
        lease_ms: u64,
        /// Claims to recover.
        recover: Vec<u64>,
    },
    /// `record`.
    Record {
        /// Worker.
        worker: String,
        /// Outcomes.
        completions: Vec<Completion>,
    },
    /// `reap_expired`.
    Reap,
}

/// A store answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    /// Done, nothing to return.
    Done,
    /// Claimed jobs.
    Claimed(Vec<ClaimedJob>),
    /// Heartbeat answer.
    Heartbeat(HeartbeatAnswer),
    /// Record results.
    Recorded(Vec<(JobId, RecordResult)>),
    /// Jobs reaped.
    Reaped(u64),
    /// The connection closed before the answer came: the client cannot
    /// know whether the call took effect.
    Closed,
    /// The call failed.
    Failed {
        /// Why.
        message: String,
        /// Whether trying again may succeed.
        transient: bool,
    },
}

/// What the database host was asked to do, for the checker.
#[derive(Clone, Debug)]
pub struct ClaimLog {
    /// Worker.
    pub worker: String,
    /// Simulated send time.
    pub sent_at: Duration,
    /// Jobs it got.
    pub jobs: Vec<JobId>,
}

/// What becomes of a claim's reply once the store has claimed the jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyFate {
    /// Sent at once.
    Deliver,
    /// Never sent: the connection closes (the jobs are claimed all the same).
    Lose,
    /// Sent this much later (past the worker's store timeout, or not).
    Delay(Duration),
}

/// Fault injection at the database host.
pub trait Faults: 'static {
    /// Whether this request fails, and how long it takes first.
    fn next(&self) -> (bool, Duration);
    /// Record a claim for the checker.
    fn log_claim(&self, claim: ClaimLog);
    /// What becomes of the reply to `worker`'s claim that succeeded with `jobs`.
    fn claim_reply(&self, _worker: &str, _jobs: &[ClaimedJob]) -> ReplyFate {
        ReplyFate::Deliver
    }
    /// Why the database refuses this batch of outcomes for good (a value it
    /// cannot store), if it does.
    fn refuse_record(&self, _completions: &[Completion]) -> Option<String> {
        None
    }
    /// A planted bug: the database ignores the claims a heartbeat asks it to
    /// recover.
    fn ignores_recovery(&self) -> bool {
        false
    }
}

/// Serve `store` until the host stops.
pub async fn serve(store: MemoryStore, faults: std::rc::Rc<dyn Faults>) -> turmoil::Result {
    let socket = std::rc::Rc::new(UdpSocket::bind(("0.0.0.0", PORT)).await?);
    let mut buf = vec![0; MAX_DATAGRAM];
    loop {
        let (n, from) = socket.recv_from(&mut buf).await?;
        // Every client is the simulation's own: a request that is cut or
        // does not parse is a bug in the simulation, not a fault to absorb.
        let request = match serde_json::from_slice::<Request>(&buf[..n]) {
            Ok(request) if n < MAX_DATAGRAM => request,
            Ok(_) => return Err(format!("a store request filled all {MAX_DATAGRAM} bytes").into()),
            Err(e) => return Err(format!("a store request does not parse: {e}").into()),
        };
        let (store, faults, socket) = (store.clone(), faults.clone(), socket.clone());
        tokio::task::spawn_local(async move {
            let response = handle(request, store, faults).await;
            let out = serde_json::to_vec(&response).unwrap_or_else(|_| b"\"Done\"".to_vec());
            // A reply to a worker that crashed or was partitioned away is
            // lost, as on a real network.
            let _ = socket.send_to(&out, from).await;
        });
    }
}

async fn handle(request: Request, store: MemoryStore, faults: std::rc::Rc<dyn Faults>) -> Response {
    let (fail, delay) = faults.next();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let claimer = match &request {
        Request::Claim { request, .. } => Some(request.worker.clone()),
        _ => None,
    };
    let response = if fail {
        Response::Failed {
            message: "injected store error".into(),
            transient: true,
        }
    } else {
        answer(&store, request, &*faults).await
    };
    if let (Some(worker), Response::Claimed(jobs)) = (&claimer, &response) {
        match faults.claim_reply(worker, jobs) {
            ReplyFate::Deliver => {}
            ReplyFate::Lose => return Response::Closed,
            ReplyFate::Delay(by) => tokio::time::sleep(by).await,
        }
    }
    response
}

async fn answer(store: &MemoryStore, request: Request, faults: &dyn Faults) -> Response {
    let result = match request {
        Request::Register(info) => store.register_worker(&info).await.map(|()| Response::Done),
        Request::Deregister(stop) => store
            .deregister_worker(&stop)
            .await
            .map(|()| Response::Done),
        Request::Claim {
            request,
            sent_at_ms,
        } => {
            let claimed = store.claim(&request).await;
            if let Ok(jobs) = &claimed {
                faults.log_claim(ClaimLog {
                    worker: request.worker,
                    sent_at: Duration::from_millis(sent_at_ms),
                    jobs: jobs.iter().map(|j| j.lease.job).collect(),
                });
            }
            claimed.map(Response::Claimed)
        }
        Request::Heartbeat {
            worker,
            phase,
            leases,
            lease_ms,
            recover,
        } => {
            let recover = if faults.ignores_recovery() {
                Vec::new()
            } else {
                recover
            };
            store
                .heartbeat(
                    &worker,
                    phase,
                    &leases,
                    Duration::from_millis(lease_ms),
                    &recover,
                )
                .await
                .map(Response::Heartbeat)
        }
        Request::Record {
            worker,
            completions,
        } => match faults.refuse_record(&completions) {
            Some(message) => Err(StoreError::Database(message)),
            None => store
                .record(&worker, &completions)
                .await
                .map(Response::Recorded),
        },
        Request::Reap => store.reap_expired().await.map(Response::Reaped),
    };
    result.unwrap_or_else(|e| Response::Failed {
        transient: e.is_transient(),
        message: e.to_string(),
    })
}

/// A worker's store: every call a round trip to the database host.
#[derive(Clone, Debug)]
pub struct RemoteStore {
    host: String,
    /// A bug planted in this client (tests of the simulation).
    plant: Option<Plant>,
}

impl RemoteStore {
    /// A client of the database host `host`.
    pub fn new(host: &str) -> Self {
        RemoteStore {
            host: host.to_string(),
            plant: None,
        }
    }

    /// Plant a bug in this client; plants that live elsewhere change nothing.
    pub fn with_plant(mut self, plant: Option<Plant>) -> Self {
        self.plant = plant;
        self
    }

    async fn call(&self, request: Request) -> Result<Response, StoreError> {
        let down = |e: std::io::Error| StoreError::Unreachable(e.to_string());
        // A socket of its own per call: an answer that comes after the shell
        // gave up on the call finds no one (the socket is dropped with the
        // call) and is lost, as on a connection that was closed.
        let socket = UdpSocket::bind(("0.0.0.0", 0)).await.map_err(down)?;
        let out = serde_json::to_vec(&request).map_err(|e| StoreError::Database(e.to_string()))?;
        socket
            .send_to(&out, (self.host.as_str(), PORT))
            .await
            .map_err(down)?;
        let mut buf = vec![0; REPLY_ROOM];
        let (n, _) = socket.recv_from(&mut buf).await.map_err(down)?;
        // A cut answer would read as a corrupt store: say what it is.
        assert!(
            n < REPLY_ROOM,
            "a store answer filled all {REPLY_ROOM} bytes of room: raise REPLY_ROOM"
        );
        let reply = &buf[..n];
        match serde_json::from_slice(reply) {
            Ok(Response::Closed) => Err(StoreError::Unreachable("connection closed".into())),
            Ok(Response::Failed {
                message,
                transient: true,
            }) => Err(StoreError::Unreachable(message)),
            // The planted bug: a refusal for good is taken for an outage.
            Ok(Response::Failed { message, .. })
                if self.plant == Some(Plant::PermanentErrorsLookTransient) =>
            {
                Err(StoreError::Unreachable(message))
            }
            Ok(Response::Failed { message, .. }) => Err(StoreError::Database(message)),
            Ok(response) => Ok(response),
            Err(e) => Err(StoreError::Corrupt(e.to_string())),
        }
    }
}

fn unexpected(response: Response) -> StoreError {
    StoreError::Corrupt(format!("unexpected response {response:?}"))
}

fn unsupported() -> StoreError {
    StoreError::Database("not part of the simulation protocol".into())
}

fn sim_now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

impl Store for RemoteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn enqueue(&self, _jobs: &[NewJob]) -> Result<Vec<Enqueued>, StoreError> {
        Err(unsupported())
    }
    async fn bulk(
        &self,
        _action: BulkAction,
        _filter: &BulkFilter,
        _dry_run: bool,
    ) -> Result<u64, StoreError> {
        Err(unsupported())
    }
    async fn prune(
        &self,
        _states: &[JobState],
        _older_than: Duration,
        _dry_run: bool,
    ) -> Result<u64, StoreError> {
        Err(unsupported())
    }
    async fn queue_stats(&self) -> Result<Vec<QueueStats>, StoreError> {
        Err(unsupported())
    }
    async fn set_paused(&self, _queue: &str, _paused: bool) -> Result<bool, StoreError> {
        Err(unsupported())
    }
    async fn put_schedule(&self, _schedule: &Schedule) -> Result<bool, StoreError> {
        Err(unsupported())
    }
    async fn remove_schedule(&self, _name: &str) -> Result<bool, StoreError> {
        Err(unsupported())
    }
    async fn schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        Err(unsupported())
    }
    async fn fire_schedule(&self, _name: &str, _slot_ms: i64) -> Result<Option<JobId>, StoreError> {
        Err(unsupported())
    }
    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>, StoreError> {
        let request = Request::Claim {
            request: request.clone(),
            sent_at_ms: sim_now().as_millis() as u64,
        };
        match self.call(request).await? {
            Response::Claimed(jobs) => Ok(jobs),
            other => Err(unexpected(other)),
        }
    }
    async fn heartbeat(
        &self,
        worker: &str,
        phase: Phase,
        leases: &[Lease],
        lease: Duration,
        recover: &[u64],
    ) -> Result<HeartbeatAnswer, StoreError> {
        if self.plant == Some(Plant::HeartbeatsDroppedWhileDraining) && phase != Phase::Running {
            return Ok(HeartbeatAnswer::default());
        }
        let request = Request::Heartbeat {
            worker: worker.to_string(),
            phase,
            leases: leases.to_vec(),
            lease_ms: lease.as_millis() as u64,
            recover: recover.to_vec(),
        };
        match self.call(request).await? {
            Response::Heartbeat(mut answer) => {
                if self.plant == Some(Plant::LostLeasesIgnored) {
                    answer.lost.clear();
                }
                Ok(answer)
            }
            other => Err(unexpected(other)),
        }
    }
    async fn record(
        &self,
        worker: &str,
        completions: &[Completion],
    ) -> Result<Vec<(JobId, RecordResult)>, StoreError> {
        let request = Request::Record {
            worker: worker.to_string(),
            completions: completions.to_vec(),
        };
        match self.call(request).await? {
            Response::Recorded(results) => Ok(results),
            other => Err(unexpected(other)),
        }
    }
    async fn reap_expired(&self) -> Result<u64, StoreError> {
        match self.call(Request::Reap).await? {
            Response::Reaped(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }
    async fn cancel(&self, _id: JobId) -> Result<CancelResult, StoreError> {
        Err(unsupported())
    }
    async fn retry(&self, _id: JobId) -> Result<bool, StoreError> {
        Err(unsupported())
    }
    async fn get(&self, _id: JobId) -> Result<Option<Job>, StoreError> {
        Err(unsupported())
    }
    async fn list(&self, _filter: &JobFilter) -> Result<Vec<Job>, StoreError> {
        Err(unsupported())
    }
    async fn history(&self, _id: JobId) -> Result<Vec<JobEvent>, StoreError> {
        Err(unsupported())
    }
    async fn output(&self, _id: JobId) -> Result<Option<Vec<u8>>, StoreError> {
        Err(unsupported())
    }
    async fn register_worker(&self, info: &WorkerInfo) -> Result<(), StoreError> {
        match self.call(Request::Register(info.clone())).await? {
            Response::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }
    async fn deregister_worker(&self, stop: &WorkerStop) -> Result<(), StoreError> {
        match self.call(Request::Deregister(stop.clone())).await? {
            Response::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }
    async fn stops(&self) -> Result<Vec<WorkerStop>, StoreError> {
        Err(unsupported())
    }
    async fn activity(&self, _span: Duration) -> Result<Vec<Activity>, StoreError> {
        Err(unsupported())
    }
    async fn workers(&self, _lease: Duration) -> Result<Vec<WorkerRow>, StoreError> {
        Err(unsupported())
    }
    async fn report_engine(&self, _worker: &str, _state: &str) -> Result<(), StoreError> {
        Err(unsupported())
    }
    async fn instance_id(&self) -> Result<String, StoreError> {
        Ok("sim".into())
    }
    async fn wakeups(&self) -> Result<Option<mpsc::Receiver<Wakeup>>, StoreError> {
        // Workers poll in the simulation: wake-ups would cross hosts in-process.
        Ok(None)
    }
}
