//! The takeover of the legacy supervisor (spec/helios-api-v3.md §8.2, spec/helios-proxy.md
//! §3-§4): writes `apiEndpointOverride` and `listenPortOverride` into its database
//! (`/data/database.sqlite`, table `config`) by exec'ing a small script inside its container,
//! then restarts its systemd unit over D-Bus. Idempotent; a breadcrumb in the runtime dir makes
//! a restart missed by a crash happen at the next run. `untakeover` writes back what the first
//! takeover replaced (or removes both keys when that is unknown) the same way, which gives back
//! plain legacy operation.
//!
//! A run: find the container `balena_supervisor`, else `resin_supervisor` (none: nothing to
//! do); write the breadcrumb; exec a script in the container that reads both keys and, when
//! they differ from the wanted values, rewrites both in one transaction (with the supervisor's
//! own node and `sqlite3` module, else the `sqlite3` command); restart its unit
//! (`balena-supervisor.service` or `resin-supervisor.service`, `RestartUnit` waiting for
//! `JobRemoved`, at most 90 s; a job that fails or times out is a warning, the settings being
//! written) when the script changed something or the breadcrumb was already there; then remove
//! the breadcrumb. Values with quotes, newlines or shell metacharacters are refused before
//! anything runs. The values the first takeover replaced are kept in `legacy-takeover.json`
//! beside the config file (never overwritten by later takeovers); `untakeover` writes them
//! back (absent keys deleted), restarts the unit the same way and forgets the file.
//!
//! The daemon runs the takeover first when `BALENA_SUPERVISOR_*` configured the legacy
//! supervisor (the container entrypoint's contract, spec §2.3), and exits with code 1 if it
//! fails, as upstream's entrypoint does. Invariant: only the two override keys are ever
//! written in the legacy supervisor's database.
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use log::{info, warn};

use helios_actors::ports::dbus::{Bus, BusError, UnitAction};
use helios_actors::ports::engine::{Engine, EngineError, EngineSettings};
use helios_actors::ErrorChain;

/// The legacy supervisor's container, by the names balenaOS gives it (spec §8.2).
pub const LEGACY_CONTAINERS: &[&str] = &["balena_supervisor", "resin_supervisor"];
/// The breadcrumb: present while a changed database still waits for the restart.
pub const BREADCRUMB: &str = "helios-legacy-takeover-breadcrumb";
/// How long the unit restart may take before the run gives up (the breadcrumb stays).
const RESTART_TIMEOUT: Duration = Duration::from_secs(90);

/// Sets both keys to the wanted values (`HAS_API`/`HAS_PORT` = 1 with `WANT_API`/`WANT_PORT`;
/// 0 = the key absent) in one transaction when they differ. Prints the previous values as
/// `cur:<key>=<value>` lines, then `true` when it changed the database, `false` otherwise.
/// Uses the supervisor's own node and `sqlite3` module when there is node (the
/// balena-supervisor image), else the `sqlite3` command.
const SCRIPT: &str = r#"
set -eu
DB=/data/database.sqlite
KEYS="'apiEndpointOverride','listenPortOverride'"
if command -v node >/dev/null 2>&1; then
  exec node -e '
const sqlite3 = require("sqlite3");
const db = new sqlite3.Database("/data/database.sqlite");
const e = process.env;
const want = {};
if (e.HAS_API === "1") want.apiEndpointOverride = e.WANT_API;
if (e.HAS_PORT === "1") want.listenPortOverride = e.WANT_PORT;
const keys = "(\"apiEndpointOverride\",\"listenPortOverride\")".replace(/"/g, "\x27");
const fail = (err) => { console.error(err.message); process.exit(1); };
db.all("SELECT key, value FROM config WHERE key IN " + keys + " ORDER BY key", (err, rows) => {
  if (err) return fail(err);
  const cur = Object.fromEntries(rows.map((r) => [r.key, String(r.value)]));
  for (const [k, v] of Object.entries(cur)) console.log("cur:" + k + "=" + v);
  const same = Object.keys(cur).length === Object.keys(want).length &&
    Object.entries(want).every(([k, v]) => cur[k] === v);
  if (same) { console.log("false"); return db.close(); }
  db.serialize(() => {
    db.run("BEGIN");
    db.run("DELETE FROM config WHERE key IN " + keys);
    for (const [k, v] of Object.entries(want)) db.run("INSERT INTO config (key, value) VALUES (?, ?)", [k, v]);
    db.run("COMMIT", (err) => { if (err) return fail(err); console.log("true"); db.close(); });
  });
});'
fi
cur=$(sqlite3 -separator '=' "$DB" "SELECT key, value FROM config WHERE key IN ($KEYS) ORDER BY key")
[ -n "$cur" ] && printf '%s\n' "$cur" | sed 's/^/cur:/'
want=""
sql=""
if [ "$HAS_API" = 1 ]; then
  want="apiEndpointOverride=$WANT_API"
  sql="INSERT INTO config (key, value) VALUES ('apiEndpointOverride', '$WANT_API');"
fi
if [ "$HAS_PORT" = 1 ]; then
  want="${want:+$want
}listenPortOverride=$WANT_PORT"
  sql="$sql INSERT INTO config (key, value) VALUES ('listenPortOverride', '$WANT_PORT');"
fi
if [ "$cur" = "$want" ]; then echo false; exit 0; fi
sqlite3 "$DB" "BEGIN; DELETE FROM config WHERE key IN ($KEYS); $sql COMMIT;"
echo true
"#;

/// The two override keys as stored (None = absent).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Overrides {
    #[serde(rename = "apiEndpointOverride")]
    pub api_endpoint: Option<String>,
    #[serde(rename = "listenPortOverride")]
    pub listen_port: Option<String>,
}

/// What `takeover` / `untakeover` do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Point the legacy supervisor at helios.
    Take,
    /// Remove both overrides (plain legacy operation).
    Restore,
}

#[derive(Debug, Clone)]
pub struct TakeoverSettings {
    pub engine: EngineSettings,
    pub dbus_address: String,
    /// Where the breadcrumb lives (the runtime dir).
    pub runtime_dir: PathBuf,
    /// `apiEndpointOverride`: how the legacy supervisor reaches helios (the relay).
    pub override_host: String,
    /// `listenPortOverride`: the legacy supervisor's new API port.
    pub override_port: u16,
    /// Where the values found before the first takeover are kept (in the config dir, which
    /// persists), so `untakeover` puts them back.
    pub originals: PathBuf,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No legacy supervisor container on the engine.
    NoLegacy,
    /// The database already had the wanted values and no restart was pending.
    Unchanged { container: String },
    /// The database changed (or a restart was pending) and the unit was restarted.
    Restarted { container: String, unit: String },
}

#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error("{field} must not contain quotes or newlines")]
    BadValue { field: &'static str },
    #[error("engine")]
    Engine(#[from] EngineError),
    #[error("exec in {container}")]
    Exec {
        container: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("the database script in {container} failed (exit {code:?}): {output}")]
    Script {
        container: String,
        code: Option<i64>,
        output: String,
    },
    #[error("breadcrumb {}", .path.display())]
    Breadcrumb {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("restart {unit}")]
    Restart {
        unit: String,
        #[source]
        source: BusError,
    },
}

async fn find_legacy(engine: &Engine) -> Result<Option<String>, TakeoverError> {
    for name in LEGACY_CONTAINERS {
        match engine.docker().inspect_container(name, None).await {
            Ok(_) => return Ok(Some(name.to_string())),
            Err(e) if helios_actors::ports::engine::is_status(&e, 404) => continue,
            Err(source) => {
                return Err(TakeoverError::Exec {
                    container: name.to_string(),
                    source,
                })
            }
        }
    }
    Ok(None)
}

/// Runs the database script in `container`: the previous values, and whether it changed them.
async fn run_script(
    engine: &Engine,
    container: &str,
    want: &Overrides,
) -> Result<(Overrides, bool), TakeoverError> {
    let d = engine.docker();
    let exec_err = |source| TakeoverError::Exec {
        container: container.to_string(),
        source,
    };
    let flag = |v: &Option<String>| if v.is_some() { "1" } else { "0" };
    let env = vec![
        format!("HAS_API={}", flag(&want.api_endpoint)),
        format!(
            "WANT_API={}",
            want.api_endpoint.as_deref().unwrap_or_default()
        ),
        format!("HAS_PORT={}", flag(&want.listen_port)),
        format!(
            "WANT_PORT={}",
            want.listen_port.as_deref().unwrap_or_default()
        ),
    ];
    let exec = d
        .create_exec(
            container,
            bollard::models::ExecConfig {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                env: Some(env),
                cmd: Some(vec!["sh".into(), "-c".into(), SCRIPT.into()]),
                ..Default::default()
            },
        )
        .await
        .map_err(exec_err)?;
    let mut out = String::new();
    if let bollard::exec::StartExecResults::Attached { mut output, .. } =
        d.start_exec(&exec.id, None).await.map_err(exec_err)?
    {
        while let Some(chunk) = output.next().await {
            out.push_str(&chunk.map_err(exec_err)?.to_string());
        }
    }
    let code = d.inspect_exec(&exec.id).await.map_err(exec_err)?.exit_code;
    let last = out.lines().last().unwrap_or_default().trim();
    let mut previous = Overrides::default();
    for l in out.lines().filter_map(|l| l.trim().strip_prefix("cur:")) {
        match l.split_once('=') {
            Some(("apiEndpointOverride", v)) => previous.api_endpoint = Some(v.to_string()),
            Some(("listenPortOverride", v)) => previous.listen_port = Some(v.to_string()),
            _ => {}
        }
    }
    match (code, last) {
        (Some(0), "true") => Ok((previous, true)),
        (Some(0), "false") => Ok((previous, false)),
        _ => Err(TakeoverError::Script {
            container: container.to_string(),
            code,
            output: out.trim().chars().take(500).collect(),
        }),
    }
}

/// Remembers what the first takeover replaced (never overwritten by later takeovers), and
/// forgets it once restored.
fn keep_originals(s: &TakeoverSettings, mode: Mode, previous: &Overrides, changed: bool) {
    let res = match mode {
        Mode::Take if changed && !s.originals.exists() => {
            let v = serde_json::to_vec(previous).expect("overrides serialise");
            s.originals
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&s.originals, v))
        }
        Mode::Restore => match std::fs::remove_file(&s.originals) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        },
        Mode::Take => Ok(()),
    };
    if let Err(e) = res {
        warn!(path:% = s.originals.display(), error:% = e, decision = "continue",
            reason = "untakeover then removes the overrides instead of restoring earlier values"; "Original settings not kept");
    }
}

fn breadcrumb(dir: &Path) -> PathBuf {
    dir.join(BREADCRUMB)
}

/// Takes over (or restores) the legacy supervisor; see the module doc.
pub async fn run(s: &TakeoverSettings, mode: Mode) -> Result<Outcome, TakeoverError> {
    let engine = Engine::connect(&s.engine).await?;
    let Some(container) = find_legacy(&engine).await? else {
        warn!(decision = "skip", reason = "no legacy supervisor container (balena_supervisor, resin_supervisor)";
            "Nothing to take over");
        return Ok(Outcome::NoLegacy);
    };
    let want = match mode {
        Mode::Take => Overrides {
            api_endpoint: Some(s.override_host.clone()),
            listen_port: Some(s.override_port.to_string()),
        },
        Mode::Restore => std::fs::read(&s.originals)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default(),
    };
    for (field, v) in [
        ("apiEndpointOverride", &want.api_endpoint),
        ("listenPortOverride", &want.listen_port),
    ] {
        if v.as_ref()
            .is_some_and(|v| v.contains(['\'', '"', '\n', '`', '$', '\\']))
        {
            return Err(TakeoverError::BadValue { field });
        }
    }
    let crumb = breadcrumb(&s.runtime_dir);
    let crumb_err = |source| TakeoverError::Breadcrumb {
        path: crumb.clone(),
        source,
    };
    let pending = crumb.exists();
    std::fs::create_dir_all(&s.runtime_dir).map_err(crumb_err)?;
    std::fs::write(&crumb, b"").map_err(crumb_err)?;
    let changed = match run_script(&engine, &container, &want).await {
        Ok((previous, changed)) => {
            keep_originals(s, mode, &previous, changed);
            changed
        }
        Err(e) => {
            // Nothing was written: no restart is owed.
            if !pending {
                let _ = std::fs::remove_file(&crumb);
            }
            return Err(e);
        }
    };
    let what = if mode == Mode::Take {
        "takeover"
    } else {
        "restore"
    };
    if !changed && !pending {
        std::fs::remove_file(&crumb).map_err(crumb_err)?;
        info!(container:% = container, mode = what, decision = "unchanged",
            reason = "the legacy supervisor's settings are already as wanted"; "Legacy supervisor settings unchanged");
        return Ok(Outcome::Unchanged { container });
    }
    let unit = format!("{}.service", container.replace('_', "-"));
    info!(container:% = container, mode = what, changed, pending, unit:% = unit, decision = "restart",
        reason = if changed { "settings written" } else { "a restart was pending from an earlier run" };
        "Restarting the legacy supervisor");
    let bus = Bus::connect(&s.dbus_address)
        .await
        .map_err(|source| TakeoverError::Restart {
            unit: unit.clone(),
            source,
        })?;
    match bus.unit(UnitAction::Restart, &unit, RESTART_TIMEOUT).await {
        Ok(()) => info!(unit:% = unit, decision = "done"; "Legacy supervisor restarted"),
        // The settings are written: a job that failed or did not finish in time is reported.
        Err(e @ (BusError::JobFailed { .. } | BusError::Timeout { .. })) => warn!(unit:% = unit,
            error:% = ErrorChain(&e), decision = "continue",
            reason = "the restart job did not report done"; "Legacy supervisor restart unconfirmed"),
        Err(source) => {
            return Err(TakeoverError::Restart {
                unit: unit.clone(),
                source,
            })
        }
    }
    if let Err(e) = std::fs::remove_file(&crumb) {
        warn!(path:% = crumb.display(), error:% = ErrorChain(&e), decision = "continue"; "Breadcrumb not removed");
    }
    Ok(Outcome::Restarted { container, unit })
}

/// The settings from the resolved configuration and the subcommand's flags: the override host
/// defaults to the relay as the host sees it (`http://127.0.0.1:<BALENA_SUPERVISOR_PORT>`),
/// the override port to the legacy API endpoint's port (spec §2.3, default 48480).
pub fn settings(
    config: &crate::config::Config,
    args: &crate::cli::TakeoverArgs,
) -> TakeoverSettings {
    let legacy = config.legacy.as_ref();
    let relay = legacy.and_then(|l| l.takeover_port).unwrap_or(48484);
    let port = legacy
        .and_then(|l| l.endpoint.parse::<actix_web::http::Uri>().ok())
        .and_then(|u| u.port_u16())
        .unwrap_or(crate::config::DEFAULT_LEGACY_PORT);
    TakeoverSettings {
        engine: config.engine.clone(),
        dbus_address: config.host.dbus_address.clone(),
        runtime_dir: config.host.runtime_dir.clone(),
        override_host: args
            .override_host
            .clone()
            .unwrap_or_else(|| format!("http://127.0.0.1:{relay}")),
        override_port: args.override_port.unwrap_or(port),
        originals: config
            .config_path
            .parent()
            .unwrap_or(Path::new("."))
            .join("legacy-takeover.json"),
    }
}

/// Runs the takeover (or restore) to completion and logs the outcome; the exit code.
pub async fn run_logged(s: &TakeoverSettings, mode: Mode) -> crate::exit::ExitCode {
    info!(override_host:% = s.override_host, override_port = s.override_port, mode:? = mode,
        decision = "takeover"; "Configuring the legacy supervisor");
    match run(s, mode).await {
        Ok(o) => {
            info!(outcome:? = o, decision = "done"; "Legacy supervisor configured");
            crate::exit::ExitCode::Ok
        }
        Err(e) => {
            log::error!(error:% = ErrorChain(&e), decision = "exit"; "Legacy supervisor takeover failed");
            crate::exit::ExitCode::Startup
        }
    }
}
