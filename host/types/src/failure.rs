//! What is left of a reactor that failed, and a reactor's lifecycle state.

use std::fmt;
use std::time::Duration;

/// Why a reactor failed. The reactor is gone: its memory is freed and its
/// queued messages are dropped; every other reactor is unaffected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// The guest panicked with this message.
    Panic(String),
    /// The guest trapped.
    Trap(String),
    /// The guest trapped after the host refused to grow its memory.
    MemoryCap {
        /// The cap in bytes.
        cap: usize,
        /// The size the guest asked for.
        requested: usize,
    },
    /// One call ran longer than the CPU budget.
    CpuBudget(Duration),
    /// The guest called WASI `proc_exit`.
    Exit(i32),
    /// The guest passed the host something invalid (a pointer outside its
    /// memory, an impossible length).
    GuestFault(String),
    /// An entry point returned a non-zero status.
    Status {
        /// The entry point.
        entry: &'static str,
        /// What it returned.
        status: i32,
    },
    /// The guest trapped after the host refused to grow its memory because
    /// its byte budget (or the node's) had no room; says which.
    Budget(String),
    /// Its memory, restored lazily from a snapshot, held a page whose
    /// checksum did not match: it was failed on first touching it, before
    /// it could act on it. Says which page of its memory and of the file.
    Damaged(String),
    /// Anything else wasmtime reported.
    Other(String),
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Panic(m) => write!(f, "{m}"),
            Self::Trap(m) => write!(f, "trapped: {m}"),
            Self::Budget(m) => write!(f, "ran out of its byte budget: {m}"),
            Self::MemoryCap { cap, requested } => {
                write!(f, "ran out of memory: asked for {}, over its cap of {}", Mib(*requested), Mib(*cap))
            }
            Self::CpuBudget(d) => write!(f, "ran longer than its CPU budget of {d:?} in one call (infinite loop?)"),
            Self::Exit(c) => write!(f, "exited with code {c}"),
            Self::GuestFault(m) => write!(f, "made an invalid host call: {m}"),
            Self::Status { entry, status } => write!(f, "`{entry}` returned status {status}"),
            Self::Damaged(m) => write!(f, "{m}"),
            Self::Other(m) => write!(f, "failed: {m}"),
        }
    }
}

/// A size in MiB, exact: whole MiB as such, anything else with its bytes
/// (never rounded down to look like the cap it went over).
struct Mib(usize);

impl fmt::Display for Mib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1 << 20) {
            write!(f, "{} MiB", self.0 >> 20)
        } else {
            write!(f, "{:.2} MiB ({} bytes)", self.0 as f64 / f64::from(1u32 << 20), self.0)
        }
    }
}

/// A failed reactor's record: what happened and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// What happened.
    pub reason: FailureReason,
    /// The guest's call stack when it happened (function names when the
    /// module keeps its name section).
    pub backtrace: Option<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.reason)?;
        if let Some(bt) = &self.backtrace {
            write!(f, "\n{bt}")?;
        }
        Ok(())
    }
}

/// A reactor's lifecycle state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReactorState {
    /// Alive and taking messages.
    Running,
    /// Failed; gone, with this record left behind.
    Failed(Failure),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memory_cap_failure_never_reads_as_asking_for_the_cap() {
        let r = FailureReason::MemoryCap { cap: 16 << 20, requested: (16 << 20) + (64 << 10) };
        assert_eq!(r.to_string(), "ran out of memory: asked for 16.06 MiB (16842752 bytes), over its cap of 16 MiB");
        let r = FailureReason::MemoryCap { cap: 16 << 20, requested: 32 << 20 };
        assert_eq!(r.to_string(), "ran out of memory: asked for 32 MiB, over its cap of 16 MiB");
    }
}
