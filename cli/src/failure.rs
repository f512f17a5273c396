//! Why a command failed, and the exit code each outcome maps to. Every command returns
//! `Result<ExitCode, Failure>`; [`crate::commands::main`] prints the failure and exits with its
//! code, so scripts can tell a mistake in their input (2) from a failing service (1).

use std::process::ExitCode;

use crate::hosts::HostsError;
use crate::run::RunError;
use crate::stack::StackError;
use crate::trigger::TriggerError;

/// Exit code for bad input.
const BAD_INPUT: u8 = 2;
/// Exit code of `fanout run` when the run FAILED: more dead-lettered jobs than the config's
/// `runs` section tolerates.
pub(crate) const RUN_FAILED: u8 = 3;

/// Why a command failed: bad input (exit 2) or anything else (exit 1).
#[derive(Debug)]
pub(crate) enum Failure {
    BadInput(String),
    Other(String),
}

impl Failure {
    /// Prints the failure on stderr; its exit code.
    pub(crate) fn report(self) -> ExitCode {
        match self {
            Failure::BadInput(message) => {
                eprintln!("error: {message}");
                ExitCode::from(BAD_INPUT)
            }
            Failure::Other(message) => {
                eprintln!("error: {message}");
                ExitCode::FAILURE
            }
        }
    }
}

impl From<StackError> for Failure {
    fn from(e: StackError) -> Self {
        if e.is_bad_input() {
            Failure::BadInput(e.to_string())
        } else {
            Failure::Other(e.to_string())
        }
    }
}

impl From<RunError> for Failure {
    fn from(e: RunError) -> Self {
        Failure::Other(e.to_string())
    }
}

impl From<fanout_shared::BackendError> for Failure {
    fn from(e: fanout_shared::BackendError) -> Self {
        Failure::Other(e.to_string())
    }
}

impl From<HostsError> for Failure {
    fn from(e: HostsError) -> Self {
        match e {
            HostsError::BadInput(m) => Failure::BadInput(m),
            HostsError::Backend(e) => Failure::from(e),
        }
    }
}

/// The deployed producer failed or could not be invoked: the service's fault, not the input's.
impl From<TriggerError> for Failure {
    fn from(e: TriggerError) -> Self {
        Failure::Other(e.to_string())
    }
}
