//! The tap a journaled reactor's host calls go through: recording what
//! each call returned (the tape) and digesting what it did to the world,
//! or, in a replay, answering each call from the recorded tape instead of
//! the world and checking that the reactor asks the same.
#![forbid(unsafe_code)]

use journal_format::{Call, Entry, TapeReader, TapeWriter};
use reactor_types::Envelope;
use xxhash_rust::xxh3::Xxh3;

/// A replayed reactor did something other than what the journal recorded
/// for that call. The call fails with it (the reactor stops); the replay
/// reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the replay diverged from the recording: {0}")]
pub struct Diverged(pub String);

enum Mode {
    Record(TapeWriter),
    /// The current call's tape and how far it has been read.
    Replay { tape: Vec<u8>, pos: usize },
}

/// One reactor's tap (in its store's data while it is journaled or
/// replayed).
pub(crate) struct Tap {
    mode: Mode,
    /// Running digest of every output since the tap was made (carried over
    /// from call to call).
    outputs: Xxh3,
    /// Set by the first divergence of a replayed call.
    diverged: Option<String>,
    /// Recorded results given back in the current replayed call.
    answered: usize,
    /// Replies the replayed calls made, kept when asked (a standby's
    /// takeover answers requests sent again with them).
    replies: Option<Vec<(u64, Envelope)>>,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap").field("replay", &self.is_replay()).field("digest", &self.digest()).finish()
    }
}

impl Tap {
    /// A tap that records (production).
    pub(crate) fn recording() -> Self {
        Self { mode: Mode::Record(TapeWriter::default()), outputs: Xxh3::new(), diverged: None, answered: 0, replies: None }
    }

    /// A tap that answers from recorded tapes (a replay).
    pub(crate) fn replaying() -> Self {
        Self { mode: Mode::Replay { tape: Vec::new(), pos: 0 }, outputs: Xxh3::new(), diverged: None, answered: 0, replies: None }
    }

    /// Keeps the replies replayed calls make from now on.
    pub(crate) fn keep_replies(&mut self) {
        self.replies.get_or_insert_with(Vec::new);
    }

    /// A replayed call replied `env` to `to` (kept if asked and `to` is
    /// outside: a node's host; reactors do not send a request again).
    pub(crate) fn replayed_reply(&mut self, to: u64, env: Envelope) {
        if let Some(r) = &mut self.replies
            && reactor_types::Address(to).is_host()
        {
            r.push((to, env));
        }
    }

    /// The replies kept (see [`Tap::keep_replies`]); keeping stops.
    pub(crate) fn take_replies(&mut self) -> Vec<(u64, Envelope)> {
        self.replies.take().unwrap_or_default()
    }

    pub(crate) fn is_replay(&self) -> bool {
        matches!(self.mode, Mode::Replay { .. })
    }

    /// Starts a recorded call: an empty tape.
    pub(crate) fn begin_record(&mut self) {
        if let Mode::Record(w) = &mut self.mode {
            w.clear();
        }
    }

    /// Starts a replayed call whose recorded tape is `tape`.
    pub(crate) fn begin_replay(&mut self, recorded: &[u8]) {
        if let Mode::Replay { tape, pos } = &mut self.mode {
            tape.clear();
            tape.extend_from_slice(recorded);
            *pos = 0;
        }
        self.diverged = None;
        self.answered = 0;
    }

    /// Recorded results given back in the current replayed call.
    pub(crate) fn answered(&self) -> usize {
        self.answered
    }

    /// The tape recorded for the current call.
    pub(crate) fn tape(&self) -> &[u8] {
        match &self.mode {
            Mode::Record(w) => w.bytes(),
            Mode::Replay { tape, .. } => tape,
        }
    }

    /// A replay caught up with the recording (a restart's recovery): from
    /// now on it records, its output digest going on from the replay's.
    pub(crate) fn switch_to_recording(&mut self) {
        self.mode = Mode::Record(TapeWriter::default());
        self.diverged = None;
    }

    /// Restarts the output digest (a journal segment starts: each
    /// segment's digests are its own, so it replays from its snapshot).
    pub(crate) fn restart_outputs(&mut self) {
        self.outputs = Xxh3::new();
    }

    /// The running output digest.
    pub(crate) fn digest(&self) -> u64 {
        self.outputs.digest()
    }

    /// Digests one output: the call, its destination or subject, a number
    /// and its bytes.
    pub(crate) fn output(&mut self, call: Call, subject: u64, number: u64, bytes: &[u8]) {
        self.outputs.update(&[call as u8]);
        self.outputs.update(&subject.to_le_bytes());
        self.outputs.update(&number.to_le_bytes());
        self.outputs.update(&(bytes.len() as u64).to_le_bytes());
        self.outputs.update(bytes);
    }

    /// Records what a call returned (nothing in a replay).
    pub(crate) fn record(&mut self, entry: &Entry<'_>) {
        if let Mode::Record(w) = &mut self.mode {
            w.push(entry);
        }
    }

    /// In a replay, the recorded result of the next host call, which must
    /// be a `call`; `Ok(None)` when recording. A missing, unreadable or
    /// different entry is a divergence (also kept for
    /// [`Tap::diverged`]).
    pub(crate) fn next(&mut self, call: Call) -> Result<Option<Entry<'_>>, Diverged> {
        let Mode::Replay { tape, pos } = &mut self.mode else { return Ok(None) };
        let tape: &Vec<u8> = tape;
        let mut r = TapeReader::new(&tape[*pos..]);
        let problem = match r.next_entry() {
            Ok(Some(e)) if e.call() == call => {
                *pos += r.position();
                self.answered += 1;
                return Ok(Some(e));
            }
            Ok(Some(e)) => format!("the reactor called `{}` where the recording has `{}`", call.name(), e.call().name()),
            Ok(None) => format!("the reactor called `{}`, which the recording does not have", call.name()),
            Err(e) => format!("the recorded tape is malformed: {e}"),
        };
        self.diverged.get_or_insert(problem.clone());
        Err(Diverged(problem))
    }

    /// Records a divergence found by the caller (a recorded result that
    /// does not fit the call).
    pub(crate) fn diverge(&mut self, problem: String) -> Diverged {
        self.diverged.get_or_insert(problem.clone());
        Diverged(problem)
    }

    /// After a replayed call: a divergence if recorded results were left
    /// unused.
    pub(crate) fn finish_replay(&mut self) -> Result<(), String> {
        if let Some(d) = &self.diverged {
            return Err(d.clone());
        }
        if let Mode::Replay { tape, pos } = &self.mode
            && *pos < tape.len()
        {
            let mut r = TapeReader::new(&tape[*pos..]);
            let next = r.next_entry().ok().flatten().map_or("?", |e| e.call().name());
            let problem = format!("the recording has a call to `{next}` the reactor did not make");
            self.diverged = Some(problem.clone());
            return Err(problem);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_answers_from_the_tape_and_notices_other_calls() {
        let mut rec = Tap::recording();
        rec.begin_record();
        rec.record(&Entry::Value { call: Call::Send, value: -2 });
        rec.record(&Entry::Clock { id: 0, errno: 0, time: 42 });
        rec.output(Call::Send, 7, 0, b"hi");
        let tape = rec.tape().to_vec();

        let mut rep = Tap::replaying();
        rep.begin_replay(&tape);
        assert_eq!(rep.next(Call::Send).unwrap(), Some(Entry::Value { call: Call::Send, value: -2 }));
        rep.output(Call::Send, 7, 0, b"hi");
        assert_eq!(rep.next(Call::Clock).unwrap(), Some(Entry::Clock { id: 0, errno: 0, time: 42 }));
        assert!(rep.finish_replay().is_ok());
        assert_eq!(rep.digest(), rec.digest());

        rep.begin_replay(&tape);
        let e = rep.next(Call::Request).unwrap_err();
        assert!(e.0.contains("`request` where the recording has `send`"), "{e}");
        assert!(rep.finish_replay().is_err());

        rep.begin_replay(&tape);
        rep.next(Call::Send).unwrap();
        assert!(rep.finish_replay().unwrap_err().contains("`clock_time_get` the reactor did not make"));
        assert_eq!(Tap::recording().next(Call::Send).unwrap(), None);
    }
}
