//! Which workflow errors count toward giving a target up.
use super::retry::error_is_transient;
use crate::ports::engine::EngineError;
use crate::ports::locks::LockError;
use crate::seek::plan::StepError;

fn workflow_error(e: StepError) -> mahler::error::Error {
    mahler::error::Error::runtime(e)
}

fn engine_status(status_code: u16) -> StepError {
    StepError::Engine(EngineError::Call {
        call: "pull image",
        source: bollard::errors::Error::DockerResponseServerError {
            status_code,
            message: "manifest unknown".into(),
        },
    })
}

/// Only failures of the release count toward `max_attempts`.
#[test]
fn environment_faults_do_not_count_toward_giving_up() {
    let transient = [
        engine_status(500),
        StepError::Engine(EngineError::Pull {
            image: "a".into(),
            message: "unexpected EOF".into(),
        }),
        StepError::Locked(LockError::Locked {
            app: "a".into(),
            path: "/tmp/updates.lock".into(),
        }),
    ];
    for e in transient {
        let shown = e.to_string();
        assert!(error_is_transient(&workflow_error(e)), "{shown}");
    }
    let counted = [
        engine_status(404),
        engine_status(400),
        StepError::Timeout("db did not reach ServiceHealthy".into()),
    ];
    for e in counted {
        let shown = e.to_string();
        assert!(!error_is_transient(&workflow_error(e)), "{shown}");
    }
    // An error of the planner itself (no step error inside) counts.
    assert!(!error_is_transient(&mahler::error::Error::runtime(
        "sensor conflict"
    )));
}
