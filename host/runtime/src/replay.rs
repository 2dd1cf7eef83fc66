//! Replaying a journaled reactor: its snapshot (or its spawn) plus its
//! journal segments, re-executed call by call on a [`Shard`] of its own,
//! each call given its recorded input and answered from its recorded tape,
//! nothing it does reaching the world; after every call its output digest
//! is compared with the recorded one, at every snapshot point its state
//! digest, and a recorded failure with the failure the replay gives.
#![forbid(unsafe_code)]

use crate::shard::{LoadedModule, Replayed, Shard};
use crate::snapshot::{RestoreOptions, SnapshotError};
use journal_format::{Cursor, Header, Journal, JournalError, Located, OwnedStep, Record, Step};
use reactor_types::{Address, Failure, SpawnError};
use snapshot_format::{SnapshotFile, SnapshotId};
use std::sync::Arc;

/// Why a replay could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A journal file is damaged or malformed.
    #[error("{file}: {source}")]
    Journal { file: String, source: JournalError },
    /// The files given do not belong together (another reactor, another
    /// module, a gap between segments, the wrong snapshot).
    #[error("{0}")]
    Mismatch(String),
    /// The snapshot could not be restored.
    #[error("cannot restore the snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
    /// The reactor could not be started from its spawn.
    #[error("cannot start the reactor: {0}")]
    Spawn(SpawnError),
}

/// One journal segment: where it came from (for messages) and its bytes.
#[derive(Debug, Clone)]
pub struct SegmentBytes {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// What one replayed call did, against its recording.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// Its step number.
    pub step: u64,
    /// True for the reactor's start-up call.
    pub init: bool,
    pub kind: u8,
    pub from: Address,
    pub corr: u64,
    pub payload_len: usize,
    /// Host-call results it was given from the recording.
    pub host_calls: usize,
    /// Its output digest matched the recorded one.
    pub outputs_match: bool,
    /// It made exactly the host calls recorded (else why not).
    pub diverged: Option<String>,
    /// The recording says it failed the reactor.
    pub recorded_failure: Option<String>,
    /// It failed the reactor in the replay.
    pub failure: Option<Failure>,
}

impl StepReport {
    /// Whether it did what the recording says, failure included.
    pub fn matches(&self) -> bool {
        self.outputs_match
            && self.diverged.is_none()
            && match (&self.recorded_failure, &self.failure) {
                (None, None) => true,
                (Some(r), Some(f)) => *r == f.to_string(),
                _ => false,
            }
    }
}

/// What a replay meets, in order.
#[derive(Debug, Clone)]
pub enum Event {
    /// A call was replayed.
    Step(StepReport),
    /// A segment ended at a snapshot: the replayed state digest against
    /// the recorded one.
    SnapshotPoint { step: u64, snapshot: SnapshotId, matches: bool },
}

/// A reactor being replayed.
#[derive(Debug)]
pub struct Replay {
    shard: Shard,
    module: Arc<LoadedModule>,
    address: Address,
    segments: Vec<SegmentBytes>,
    headers: Vec<Header>,
    /// The segment being read, and where in it (`None`: at its start).
    seg: usize,
    cursor: Option<Cursor>,
    /// The start-up call has run (or the reactor was restored).
    started: bool,
    /// The next record, read ahead (to see whether a failure follows a call).
    peeked: Option<(Cursor, Owned)>,
    /// Buffers of records replayed, for the next ones (no allocation per
    /// record).
    spare: std::cell::RefCell<Vec<(Vec<u8>, Vec<u8>)>>,
    /// The step number of the next call.
    step: u64,
    /// The reactor is gone (it failed).
    dead: bool,
    /// A failed call waiting for its failure record.
    pending: Option<StepReport>,
}

fn journal_error(s: &SegmentBytes, source: JournalError) -> ReplayError {
    ReplayError::Journal { file: s.name.clone(), source }
}

impl Replay {
    /// Prepares a replay of `segments` (consecutive segments of one
    /// reactor's journal, oldest first) on `shard`, whose engine has
    /// `module` loaded. `base` is the snapshot chain (full first) the
    /// first segment starts from; none when it starts at the spawn.
    /// Checks that every piece belongs with the others and restores the
    /// snapshot, checking its state digest against the journal's.
    pub fn start(
        mut shard: Shard,
        module: Arc<LoadedModule>,
        segments: Vec<SegmentBytes>,
        base: Option<&[SnapshotFile]>,
    ) -> Result<Self, ReplayError> {
        let Some(first) = segments.first() else { return Err(ReplayError::Mismatch("no journal to replay".into())) };
        let mut headers: Vec<Header> = Vec::with_capacity(segments.len());
        let mut expect_next: Option<(u64, [u8; 16], u64, String)> = None;
        for s in &segments {
            let j = Journal::open(&s.bytes).map_err(|e| journal_error(s, e))?;
            let h = *j.header();
            if let Some(h0) = headers.first()
                && h.address != h0.address
            {
                return Err(ReplayError::Mismatch(format!("{} is the journal of another reactor", s.name)));
            }
            if h.module != module.hash.0 {
                return Err(ReplayError::Mismatch(format!(
                    "{} was recorded with module sha256:{}, not the module given (sha256:{})",
                    s.name,
                    hex::encode(h.module),
                    module.hash
                )));
            }
            if let Some((step, next, digest, prev)) = &expect_next
                && (h.first_step != *step || h.base != *next || h.base_digest != *digest)
            {
                return Err(ReplayError::Mismatch(format!(
                    "{} does not follow {prev}: it starts at step {} from snapshot {}, where {prev} ends at step {step} at snapshot {}",
                    s.name,
                    h.first_step,
                    SnapshotId(h.base),
                    SnapshotId(*next)
                )));
            }
            let summary = j.check().map_err(|e| journal_error(s, e))?;
            expect_next = match summary.end {
                Some((next, digest)) => Some((h.first_step + summary.steps, next, digest, s.name.clone())),
                None => None,
            };
            if expect_next.is_none() && headers.len() + 1 < segments.len() {
                return Err(ReplayError::Mismatch(format!("{} does not end at a snapshot, yet more segments follow it", s.name)));
            }
            headers.push(h);
        }
        let h0 = headers[0];
        let address = Address(h0.address);
        match (h0.from_spawn(), base) {
            (true, Some(_)) => {
                return Err(ReplayError::Mismatch(format!(
                    "{} starts at the reactor's spawn: it is replayed without a snapshot",
                    first.name
                )));
            }
            (false, None) => {
                return Err(ReplayError::Mismatch(format!(
                    "{} starts from snapshot {}: give that snapshot (and the chain it is a delta on)",
                    first.name,
                    SnapshotId(h0.base)
                )));
            }
            (false, Some(chain)) => {
                let last = chain.last().ok_or_else(|| ReplayError::Mismatch("an empty snapshot chain".into()))?;
                if last.header().id != SnapshotId(h0.base) {
                    return Err(ReplayError::Mismatch(format!(
                        "{} starts from snapshot {}, not from the snapshot given ({})",
                        first.name,
                        SnapshotId(h0.base),
                        last.header().id
                    )));
                }
                let options = RestoreOptions { foreign: true, ..RestoreOptions::default() };
                shard.restore_only(chain, options, address)?;
                let digest = shard.state_digest(address).ok_or(SnapshotError::NoSuchReactor(address))?;
                if digest != h0.base_digest {
                    return Err(ReplayError::Mismatch(format!(
                        "the state restored from snapshot {} is not the state {} was recorded from (state digest {digest:016x}, recorded {:016x})",
                        SnapshotId(h0.base),
                        first.name,
                        h0.base_digest
                    )));
                }
                shard.replay_restored(address);
            }
            (true, None) => {}
        }
        Ok(Self {
            shard,
            module,
            address,
            segments,
            headers,
            seg: 0,
            cursor: None,
            peeked: None,
            spare: std::cell::RefCell::new(Vec::new()),
            started: !h0.from_spawn(),
            step: h0.first_step,
            dead: false,
            pending: None,
        })
    }

    /// The replayed reactor's address.
    pub fn address(&self) -> Address {
        self.address
    }

    /// The step number of the next call.
    pub fn next_step(&self) -> u64 {
        self.step
    }

    /// The step number of the first call it replays.
    pub fn first_step(&self) -> u64 {
        self.headers[0].first_step
    }

    /// Whether the reactor is gone (its recorded failure was replayed).
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// The shard it runs on (to snapshot or read the replayed state).
    pub fn shard(&mut self) -> &mut Shard {
        &mut self.shard
    }

    /// The recorded call the next [`Replay::next_event`] replays, if the
    /// next record is one: its step number and envelope kind, sender and
    /// payload length.
    pub fn peek_call(&self) -> Option<(u64, u8, Address, usize)> {
        match self.peek()? {
            Ok((_, Owned::Call { step, st, .. })) => Some((step, st.kind, Address(st.from), st.payload.len())),
            _ => None,
        }
    }

    /// The next record and the cursor after it, without moving.
    fn peek(&self) -> Option<Result<(Cursor, Owned), ReplayError>> {
        let s = self.segments.get(self.seg)?;
        let j = Journal::reopen(self.headers[self.seg], &s.bytes);
        let mut records = match self.cursor {
            Some(c) => j.resume(c),
            None => j.records(),
        };
        let r = records.next()?;
        let spare = self.spare.borrow_mut().pop().unwrap_or_default();
        Some(r.map(|l| (records.cursor(), Owned::from_located(l, spare))).map_err(|e| journal_error(s, e)))
    }

    /// Whether the next record is a failure (it is read ahead and kept for
    /// the next read; an error is left for that read to find).
    fn next_is_failure(&mut self) -> bool {
        if self.peeked.is_none()
            && let Some(Ok(r)) = self.peek()
        {
            self.peeked = Some(r);
        }
        matches!(self.peeked, Some((_, Owned::Failure(_))))
    }

    /// Replays up to the next event; `None` at the end of the journal.
    pub fn next_event(&mut self) -> Option<Result<Event, ReplayError>> {
        loop {
            let next = match self.peeked.take() {
                Some(r) => Some(Ok(r)),
                None => self.peek(),
            };
            let (cursor, record) = match next {
                None => {
                    if self.seg + 1 < self.segments.len() {
                        self.seg += 1;
                        self.cursor = None;
                        self.peeked = None;
                        continue;
                    }
                    return self.pending.take().map(|p| Ok(Event::Step(p)));
                }
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(r)) => r,
            };
            self.cursor = Some(cursor);
            let event = match record {
                Owned::Call { step, init, st } => {
                    let e = self.call(step, &st, init);
                    // Its buffers serve the next record.
                    self.spare.get_mut().push((st.tape, st.payload));
                    e
                }
                Owned::Failure(text) => match self.pending.take() {
                    Some(mut p) => {
                        p.recorded_failure = Some(text);
                        Ok(Event::Step(p))
                    }
                    None => Err(ReplayError::Mismatch("a failure record without its call".into())),
                },
                Owned::End { next, digest } => {
                    let matches = self.shard.state_digest(self.address) == Some(digest);
                    self.shard.replay_next_segment(self.address);
                    Ok(Event::SnapshotPoint { step: self.step, snapshot: SnapshotId(next), matches })
                }
            };
            match event {
                Ok(Event::Step(p)) if p.recorded_failure.is_none() && self.next_is_failure() => {
                    // Its failure record follows: report them together.
                    self.pending = Some(p);
                }
                e => return Some(e),
            }
        }
    }

    fn call(&mut self, step: u64, st: &OwnedStep, init: bool) -> Result<Event, ReplayError> {
        let st = st.step();
        let replayed: Replayed = if self.dead {
            return Err(ReplayError::Mismatch(format!("step {step}: the journal goes on after the reactor failed")));
        } else if init {
            if self.started {
                return Err(ReplayError::Mismatch(format!("step {step}: a second start-up call")));
            }
            self.started = true;
            self.shard.replay_spawn(self.address, &self.module, &st).map_err(ReplayError::Spawn)?
        } else {
            self.shard.replay_step(self.address, &st)?
        };
        self.step = step + 1;
        if replayed.failure.is_some() {
            self.dead = true;
        }
        let outputs_match = replayed.digest as u32 == st.digest;
        Ok(Event::Step(StepReport {
            step,
            init,
            kind: st.kind,
            from: Address(st.from),
            corr: st.corr,
            payload_len: st.payload.len(),
            host_calls: replayed.host_calls,
            outputs_match,
            diverged: replayed.diverged,
            recorded_failure: None,
            failure: replayed.failure,
        }))
    }
}

/// A record, owned (so the replay can run while holding it).
#[derive(Debug, Clone)]
enum Owned {
    Call { step: u64, init: bool, st: OwnedStep },
    Failure(String),
    End { next: [u8; 16], digest: u64 },
}

impl Owned {
    /// `l`, owned, in the buffers `spare` (their contents replaced).
    fn from_located(l: Located<'_>, (tape, payload): (Vec<u8>, Vec<u8>)) -> Self {
        let own = |s: Step<'_>| {
            let mut o = OwnedStep { tape, payload, ..OwnedStep::default() };
            o.set(&s);
            o
        };
        match l.record {
            Record::Init(s) => Owned::Call { step: l.step, init: true, st: own(s) },
            Record::Step(s) => Owned::Call { step: l.step, init: false, st: own(s) },
            Record::Failure(t) => Owned::Failure(t.to_owned()),
            Record::End { next, digest } => Owned::End { next, digest },
        }
    }
}
