//! `ferroxctl`: the operator's command line for a running ferrox.
//!
//! Speaks the admin protocol (`ferrox_control::admin`) on the control
//! process's Unix socket. With `--json` every answer is JSON on stdout,
//! errors too (`{"ok":false,"kind":…,"error":…}`); without it an error is
//! one line on stderr. The exit code says what happened: see
//! [`Failure`].
#![allow(clippy::disallowed_methods)] // `top` sleeps between refreshes

use std::fmt::{Display, Write as _};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use ferrox_control::admin::{self, Request, Response};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "ferroxctl: operate a running ferrox",
    after_help = "Exit codes: 0 done; 1 failed (carried out and failed, e.g. an upgrade rolled back, \
                  or the answer was lost); 2 usage; 3 ferrox not running (the admin socket does not \
                  answer); 4 refused (nothing changed: a bad change, a binary that failed its preflight)."
)]
struct Cli {
    /// The control process's admin socket.
    #[arg(long, global = true, default_value = "/run/ferrox/admin.sock")]
    socket: PathBuf,
    /// Answers, and errors, as JSON on stdout (`top`: a line per refresh).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

/// Why ferroxctl failed, and its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Carried out and failed, or the answer was lost: 1.
    Failed = 1,
    /// The command line is wrong: 2 (as clap's own usage errors).
    Usage = 2,
    /// The control process does not answer on its socket: 3.
    NotRunning = 3,
    /// Refused, nothing changed: 4.
    Refused = 4,
}

impl Failure {
    fn name(self) -> &'static str {
        match self {
            Failure::Failed => "failed",
            Failure::Usage => "usage",
            Failure::NotRunning => "not_running",
            Failure::Refused => "refused",
        }
    }
}

/// An error with its [`Failure`]; any other error counts as failed.
#[derive(Debug)]
struct Classified(Failure, anyhow::Error);

impl std::fmt::Display for Classified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.1)
    }
}

impl std::error::Error for Classified {}

fn classified(failure: Failure, error: impl Into<anyhow::Error>) -> anyhow::Error {
    anyhow::Error::new(Classified(failure, error.into()))
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The dataplane, configuration versions and every server's health.
    Status,
    /// Requests, errors, bytes, connections and latency per pool and server.
    Stats,
    /// The keys each core counts as hot (read more than a pool's
    /// hot_key_cache min_rate a second), hottest first.
    Hotkeys {
        #[arg(long)]
        pool: Option<String>,
    },
    /// A live view refreshed once a second (Ctrl-C ends it).
    Top {
        /// Stop after this many refreshes.
        #[arg(long)]
        count: Option<u64>,
    },
    /// The running configuration.
    Config {
        #[command(subcommand)]
        action: ConfigCmd,
    },
    /// Servers of a pool.
    Server {
        #[command(subcommand)]
        action: ServerCmd,
    },
    /// Refuse a command (in every pool, or in --pool).
    Block {
        command: String,
        #[arg(long)]
        pool: Option<String>,
    },
    /// Forward a blocked command again.
    Unblock {
        command: String,
        #[arg(long)]
        pool: Option<String>,
    },
    /// Users of the redis pools and their permissions (live: a changed
    /// user's connections take the new rules at their next command).
    User {
        #[command(subcommand)]
        action: UserCmd,
    },
    /// The shared region and the socket buffer pool.
    Shm {
        #[command(subcommand)]
        action: ShmCmd,
    },
    /// Hot handover to another dataplane binary: client connections stay
    /// open (a pause of milliseconds); on failure the running binary goes
    /// on, or takes its connections back.
    Upgrade {
        /// The new ferrox-dataplane.
        #[arg(long)]
        binary: PathBuf,
        /// The longest each step may take, milliseconds.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
        /// How long requests in flight may take to finish before the
        /// running dataplane freezes, milliseconds (default: its
        /// --drain-ms, 500); those still waiting then fail.
        #[arg(long)]
        drain_ms: Option<u64>,
    },
    /// Sets the log filter of the control process and every dataplane,
    /// at once: `info`, `debug`, `warn,ferrox_dataplane=debug`
    /// (`RUST_LOG`'s syntax).
    LogLevel { level: String },
    /// Prints shell completions.
    Completions { shell: clap_complete::Shell },
    /// Fault injection, for tests (the dataplane must run with
    /// --test-hooks).
    #[command(hide = true)]
    Debug {
        #[command(subcommand)]
        action: DebugCmd,
    },
}

#[derive(Subcommand, Debug)]
enum DebugCmd {
    /// Makes dataplane core CORE wedge itself (spin for ever, ignoring its
    /// stop flag), as a livelocked core would: the watchdog's test.
    StallCore { core: usize },
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Prints the running configuration as ferrox TOML.
    Show,
    /// Checks a file as a reload would, changing nothing.
    Validate { file: PathBuf },
    /// Reads the configuration file again (or FILE, which becomes it).
    Reload { file: Option<PathBuf> },
}

#[derive(Subcommand, Debug)]
enum ServerCmd {
    /// Adds SERVER ("ip:port:weight [name]") to POOL.
    Add {
        pool: String,
        server: String,
    },
    Remove(ServerAt),
    Weight {
        pool: String,
        addr: String,
        weight: u32,
    },
    /// Holds a server out of its pool (its keys go to the others).
    Eject(ServerAt),
    /// Lets a held-out server back.
    Restore(ServerAt),
}

// A server of a pool, by its address. (A plain comment: clap would show
// a doc comment as the help of `server remove`.)
#[derive(Args, Debug)]
struct ServerAt {
    pool: String,
    addr: String,
}

#[derive(Debug, Subcommand)]
enum UserCmd {
    /// Add a user, or replace the one of that name.
    Set {
        name: String,
        /// A password (repeat for a rotation: any of them authenticates).
        #[arg(long, required = true)]
        password: Vec<String>,
        /// A pool it may use (repeat; none: every redis pool).
        #[arg(long = "pool")]
        pools: Vec<String>,
        /// Redis ACL rules, e.g. "+@read ~report:*".
        #[arg(long, default_value = "")]
        acl: String,
    },
    /// Remove a user: its connections must authenticate again.
    Remove { name: String },
}

#[derive(Subcommand, Debug)]
enum ShmCmd {
    Show,
    /// Grows the socket buffer pool by MB MiB while traffic flows.
    Resize {
        #[arg(long = "add-mb")]
        add_mb: u64,
    },
}

fn main() {
    // `--man`: the manual page, from the same definitions as `--help`.
    if std::env::args().nth(1).as_deref() == Some("--man") {
        let _ = clap_mangen::Man::new(Cli::command().name("ferroxctl"))
            .section("8")
            .render(&mut std::io::stdout());
        return;
    }
    let json = std::env::args().any(|a| a == "--json");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version are not errors; usage errors are JSON too.
        Err(e) if json && e.use_stderr() => fail(true, Failure::Usage, &e.to_string()),
        Err(e) => e.exit(),
    };
    if let Err(e) = run(cli) {
        let failure = e
            .downcast_ref::<Classified>()
            .map_or(Failure::Failed, |c| c.0);
        fail(json, failure, &format!("{e:#}"));
    }
}

/// Reports `error` (as JSON on stdout with `--json`, else a line on
/// stderr) and exits with `failure`'s code.
fn fail(json: bool, failure: Failure, error: &str) -> ! {
    if json {
        let error = error.trim_end();
        println!(
            "{}",
            serde_json::json!({ "ok": false, "kind": failure.name(), "error": error })
        );
    } else {
        eprintln!("ferroxctl: {}", error.trim_end());
    }
    std::process::exit(failure as i32);
}

/// One connection to the control process.
struct Admin {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Admin {
    fn connect(path: &PathBuf) -> Result<Admin> {
        let stream = UnixStream::connect(path).map_err(|e| {
            classified(
                Failure::NotRunning,
                anyhow::anyhow!(
                    "cannot reach the control process at {}: {e}",
                    path.display()
                ),
            )
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Admin {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Waits up to `timeout` for each answer (a long operation).
    fn wait_up_to(&mut self, timeout: Duration) -> Result<()> {
        self.writer.set_read_timeout(Some(timeout))?;
        Ok(())
    }

    fn call(&mut self, request: &Request) -> Result<serde_json::Value> {
        writeln!(self.writer, "{}", admin::request_line(request))?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("the control process closed the connection");
        }
        let response: Response =
            serde_json::from_str(&line).context("an answer that is not the admin protocol")?;
        match (response.ok, response.result, response.error) {
            (true, Some(result), _) => Ok(result),
            (_, _, Some(error)) => {
                let failure = match response.kind {
                    Some(admin::ErrorKind::Failed) => Failure::Failed,
                    _ => Failure::Refused,
                };
                Err(classified(failure, anyhow::anyhow!(error)))
            }
            _ => bail!("an empty answer"),
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Cmd::Completions { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "ferroxctl",
            &mut std::io::stdout(),
        );
        return Ok(());
    }
    let json = cli.json;
    let mut admin = Admin::connect(&cli.socket)?;
    let mut out = std::io::stdout().lock();
    match cli.command {
        Cmd::Completions { .. } => unreachable!("handled above"),
        Cmd::Status => show(
            &mut out,
            &mut admin,
            &Request::Status {},
            json,
            render_status,
        )?,
        Cmd::Stats => show(&mut out, &mut admin, &Request::Stats {}, json, render_stats)?,
        Cmd::Hotkeys { pool } => {
            let value = admin.call(&Request::Stats {})?;
            let stats: admin::Stats = serde_json::from_value(value)?;
            let pools = stats
                .pools
                .iter()
                .filter(|p| pool.as_ref().is_none_or(|name| &p.name == name));
            if json {
                let keys: Vec<_> = pools
                    .flat_map(|p| {
                        p.hot_keys.iter().map(move |h| {
                            serde_json::json!({"pool": p.name, "core": h.core, "key": h.key, "rate": h.rate})
                        })
                    })
                    .collect();
                writeln!(out, "{}", serde_json::Value::Array(keys))?;
            } else {
                write!(out, "{}", render_hot_keys(pools, usize::MAX))?;
            }
        }
        Cmd::Top { count } => {
            let mut shown = 0;
            loop {
                let value = admin.call(&Request::Stats {})?;
                if json {
                    writeln!(out, "{value}")?;
                } else {
                    let stats: admin::Stats = serde_json::from_value(value)?;
                    // Clear the screen and go home, then the table.
                    write!(out, "\x1b[2J\x1b[H{}", render_stats(&stats))?;
                }
                out.flush()?;
                shown += 1;
                if count.is_some_and(|c| shown >= c) {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        Cmd::Config { action } => match action {
            ConfigCmd::Show => {
                let value = admin.call(&Request::ConfigShow {})?;
                if json {
                    writeln!(out, "{value:#}")?;
                    return Ok(());
                }
                writeln!(
                    out,
                    "# version {} from {}",
                    value["version"],
                    value["file"].as_str().unwrap_or("")
                )?;
                write!(out, "{}", value["text"].as_str().unwrap_or_default())?;
            }
            ConfigCmd::Validate { file } => {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("{}: cannot read", file.display()))
                    .map_err(|e| classified(Failure::Usage, e))?;
                let value = admin.call(&Request::ConfigValidate {
                    text,
                    file: file.display().to_string(),
                })?;
                if json {
                    writeln!(out, "{value:#}")?;
                } else {
                    writeln!(out, "{}: valid ({} pools)", file.display(), value["pools"])?;
                }
            }
            ConfigCmd::Reload { file } => {
                let path = file
                    .map(|f| std::path::absolute(&f).map(|p| p.display().to_string()))
                    .transpose()?;
                let value = admin.call(&Request::ConfigReload { path })?;
                report_applied(&mut out, &value, json)?;
            }
        },
        Cmd::Server { action } => {
            let request = match action {
                ServerCmd::Add { pool, server } => Request::ServerAdd { pool, server },
                ServerCmd::Remove(ServerAt { pool, addr }) => Request::ServerRemove { pool, addr },
                ServerCmd::Weight { pool, addr, weight } => {
                    Request::ServerWeight { pool, addr, weight }
                }
                ServerCmd::Eject(ServerAt { pool, addr }) => Request::ServerEject { pool, addr },
                ServerCmd::Restore(ServerAt { pool, addr }) => {
                    Request::ServerRestore { pool, addr }
                }
            };
            let value = admin.call(&request)?;
            if value.get("held").is_some() && !json {
                let verb = if value["held"] == true {
                    "held out of"
                } else {
                    "back in"
                };
                writeln!(
                    out,
                    "{} {verb} pool {}",
                    value["server"].as_str().unwrap_or(""),
                    value["pool"]
                )?;
            } else {
                report_applied(&mut out, &value, json)?;
            }
        }
        Cmd::Block { command, pool } => {
            let value = admin.call(&Request::Block { pool, command })?;
            report_applied(&mut out, &value, json)?
        }
        Cmd::Unblock { command, pool } => {
            let value = admin.call(&Request::Unblock { pool, command })?;
            report_applied(&mut out, &value, json)?
        }
        Cmd::User { action } => {
            let request = match action {
                UserCmd::Set {
                    name,
                    password,
                    pools,
                    acl,
                } => Request::UserSet {
                    name,
                    passwords: password,
                    pools,
                    acl,
                },
                UserCmd::Remove { name } => Request::UserRemove { name },
            };
            let value = admin.call(&request)?;
            report_applied(&mut out, &value, json)?
        }
        Cmd::Shm { action } => {
            let request = match action {
                ShmCmd::Show => Request::ShmShow {},
                ShmCmd::Resize { add_mb } => {
                    if !json {
                        writeln!(out, "growing the socket pool by {add_mb} MiB ...")?;
                    }
                    Request::ShmResize { add_mb }
                }
            };
            show(&mut out, &mut admin, &request, json, render_shm)?;
        }
        Cmd::Upgrade {
            binary,
            timeout_ms,
            drain_ms,
        } => {
            let binary = std::fs::canonicalize(&binary)
                .with_context(|| format!("no binary at {}", binary.display()))
                .map_err(|e| classified(Failure::Refused, e))?;
            if !json {
                writeln!(out, "upgrading the dataplane to {} ...", binary.display())?;
                out.flush()?;
            }
            // The steps as they happen, read from `status` on a second
            // connection while the first waits for the answer.
            let progress = (!json).then(|| Progress::start(&cli.socket));
            // Four steps of `timeout_ms` at most, the drain, and the answer.
            let drain = Duration::from_millis(drain_ms.unwrap_or(1_000));
            admin.wait_up_to(
                Duration::from_millis(timeout_ms) * 4 + drain + Duration::from_secs(15),
            )?;
            let request = Request::Upgrade {
                binary: binary.display().to_string(),
                timeout_ms: Some(timeout_ms),
                drain_ms,
            };
            let answer = admin.call(&request);
            if let Some(progress) = progress {
                progress.stop();
            }
            let value = answer?;
            if json {
                writeln!(out, "{value:#}")?;
            } else {
                write!(out, "{}", render_upgrade(&value))?;
            }
        }
        Cmd::LogLevel { level } => {
            let value = admin.call(&Request::LogLevel { level })?;
            if json {
                writeln!(out, "{value:#}")?;
            } else {
                writeln!(out, "log filter: {}", value["level"].as_str().unwrap_or(""))?;
            }
        }
        Cmd::Debug {
            action: DebugCmd::StallCore { core },
        } => {
            let value = admin.call(&Request::DebugStallCore { core })?;
            if json {
                writeln!(out, "{value:#}")?;
            } else {
                writeln!(out, "core {core} asked to wedge itself")?;
            }
        }
    }
    Ok(())
}

/// Writes the answer to `request` as indented JSON, or as `render` shows
/// it.
fn show<T: serde::de::DeserializeOwned>(
    out: &mut impl Write,
    admin: &mut Admin,
    request: &Request,
    json: bool,
    render: fn(&T) -> String,
) -> Result<()> {
    let value = admin.call(request)?;
    if json {
        writeln!(out, "{value:#}")?;
    } else {
        write!(out, "{}", render(&serde_json::from_value(value)?))?;
    }
    Ok(())
}

/// Says which configuration version the change became and whether every
/// core runs it.
///
/// A change published that not every core took in time is a failure (it
/// is in force where it was taken, and will be everywhere).
fn report_applied(out: &mut impl Write, value: &serde_json::Value, json: bool) -> Result<()> {
    let version = &value["version"];
    if value["applied"] == true {
        if json {
            writeln!(out, "{value:#}")?;
        } else {
            writeln!(
                out,
                "configuration version {version}: running on every core"
            )?;
        }
        Ok(())
    } else {
        Err(classified(
            Failure::Failed,
            anyhow::anyhow!(
                "configuration version {version} published, but not every core took it within 5 s (cores run {})",
                value["cores"]
            ),
        ))
    }
}

/// The columns of a text table: each a heading and a width, negative for
/// left-aligned text, positive for right-aligned numbers. Headings and
/// rows share the widths.
struct Columns(&'static [(&'static str, isize)]);

impl Columns {
    fn header(&self) -> String {
        let headings: Vec<&dyn Display> = self.0.iter().map(|(h, _)| h as &dyn Display).collect();
        self.row(&headings)
    }

    /// One line: `cells` in column order, one space apart.
    fn row(&self, cells: &[&dyn Display]) -> String {
        let mut line = String::new();
        for (i, (cell, &(_, width))) in cells.iter().zip(self.0).enumerate() {
            if i > 0 {
                line.push(' ');
            }
            let w = width.unsigned_abs();
            if width < 0 {
                let _ = write!(line, "{cell:<w$}");
            } else {
                let _ = write!(line, "{cell:>w$}");
            }
        }
        line.push('\n');
        line
    }
}

/// A per-second rate, whole.
fn rate(per_s: f64) -> String {
    format!("{per_s:.0}")
}

fn micros(us: Option<u64>) -> String {
    match us {
        None => "-".into(),
        Some(us) if us < 1000 => format!("{us}µs"),
        Some(us) => format!("{:.1}ms", us as f64 / 1000.0),
    }
}

/// Prints the step of an upgrade each time it changes, polling `status`
/// on a connection of its own, until stopped.
struct Progress {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Progress {
    fn start(socket: &std::path::Path) -> Progress {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (socket, stopped) = (socket.to_path_buf(), stop.clone());
        let thread = std::thread::spawn(move || {
            let Ok(mut admin) = Admin::connect(&socket) else {
                return;
            };
            let mut shown: Option<String> = None;
            while !stopped.load(Ordering::Relaxed) {
                let step = admin
                    .call(&Request::Status {})
                    .ok()
                    .and_then(|s| s["dataplane"]["upgrade"].as_str().map(str::to_string));
                if step.is_some() && step != shown {
                    let step = step.clone().unwrap_or_default();
                    let what = match step.as_str() {
                        "preflight" => {
                            "the new binary checks its arguments, configuration and layout"
                        }
                        "standby" => "the new dataplane starts (DPDK up, port not yet opened)",
                        "handing over" => {
                            "the running one drains, exports its connections, closes the port"
                        }
                        "taking over" => "the new one opens the port and restores every connection",
                        _ => "",
                    };
                    // On stderr: stdout is held by the caller, and kept for the answer.
                    eprintln!("  {step}: {what}");
                    shown = Some(step);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Progress { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

fn render_upgrade(done: &serde_json::Value) -> String {
    let ms = |name: &str| done[name].as_f64().unwrap_or(0.0);
    let maybe_ms = |name: &str| {
        done[name]
            .as_f64()
            .map_or("not measured".to_string(), |v| format!("{v:.1} ms"))
    };
    format!(
        "generation {}: {} (pid {}) serves\n\
         connections: {} exported, {} restored, {} reset\n\
         brownout {} (requests in flight finish, new ones wait)\n\
         blackout {} (freeze to the new dataplane's first frame)\n\
         pause {:.1} ms (hand over {:.1} ms, take over {:.1} ms); standby start {:.0} ms\n",
        done["generation"],
        done["binary"].as_str().unwrap_or("?"),
        done["pid"],
        done["exported"],
        done["restored"],
        done["reset_on_restore"],
        maybe_ms("brownout_ms"),
        maybe_ms("blackout_ms"),
        ms("pause_ms"),
        ms("hand_over_ms"),
        ms("take_over_ms"),
        ms("standby_ms"),
    )
}

fn render_status(status: &admin::Status) -> String {
    let mut s = String::new();
    let dp = &status.dataplane;
    s += &format!(
        "control pid {}, up {}s; dataplane pid {} on {} core(s), {}, {} restart(s), {} core stall(s)\n",
        status.control_pid,
        status.uptime_s,
        dp.pid.map_or("-".into(), |p| p.to_string()),
        dp.cores,
        if dp.alive { "alive" } else { "NOT publishing" },
        dp.restarts,
        dp.stalls
    );
    if !dp.binary.is_empty() {
        s += &format!(
            "dataplane binary {}, generation {} (hot handovers)\n",
            dp.binary, dp.generation
        );
    }
    if let Some(pid) = dp.port_holder_pid {
        s += &format!(
            "port held by pid {pid} (frames wait there during a handover), {} restart(s)\n",
            dp.port_holder_restarts
        );
    }
    if !dp.alive && !dp.heartbeat_age_ms.is_empty() {
        let ages: Vec<String> = dp
            .heartbeat_age_ms
            .iter()
            .enumerate()
            .map(|(core, ms)| format!("core {core} {ms} ms"))
            .collect();
        s += &format!("heartbeats last moved: {}\n", ages.join(", "));
    }
    s += &format!(
        "configuration {} version {}; cores run {:?}\n",
        status.config_file, status.config_version, status.applied
    );
    for pool in &status.pools {
        s += &format!(
            "\npool {} ({} on {})\n",
            pool.name, pool.protocol, pool.listen
        );
        const SERVERS: Columns = Columns(&[
            ("SERVER", -22),
            ("NAME", -16),
            ("WEIGHT", 6),
            ("STATE", -8),
            ("FAILING", 8),
            ("EJECTIONS", 9),
        ]);
        s += "  ";
        s += &SERVERS.header();
        for server in &pool.servers {
            s += "  ";
            s += &SERVERS.row(&[
                &server.addr,
                &server.name,
                &server.weight,
                &server.state,
                &server.failures,
                &server.ejections,
            ]);
        }
    }
    s
}

/// Commands shown by `stats` and `top`: the most requested.
const TOP_COMMANDS: usize = 10;

fn render_stats(stats: &admin::Stats) -> String {
    const POOLS: Columns = Columns(&[
        ("POOL", -16),
        ("REQ/S", 10),
        ("REQUESTS", 12),
        ("ERR/S", 8),
        ("ERRORS", 10),
        ("CONNS", 6),
        ("P50", 8),
        ("P99", 8),
        ("P999", 8),
    ]);
    const SERVERS: Columns = Columns(&[
        ("POOL", -16),
        ("SERVER", -22),
        ("REQ/S", 10),
        ("REQUESTS", 12),
        ("RESPONSES", 12),
        ("CONNS", 6),
        ("INFLIGHT", 8),
        ("FAILURES", 9),
        ("TIMEOUTS", 9),
        ("STATE", 8),
    ]);
    const COMMANDS: Columns = Columns(&[
        ("PROTOCOL", -9),
        ("COMMAND", -20),
        ("REQ/S", 10),
        ("REQUESTS", 12),
    ]);
    let mut s = POOLS.header();
    for pool in &stats.pools {
        s += &POOLS.row(&[
            &pool.name,
            &rate(pool.requests_per_s),
            &pool.requests,
            &rate(pool.errors_per_s),
            &pool.errors,
            &pool.connections,
            &micros(pool.p50_us),
            &micros(pool.p99_us),
            &micros(pool.p999_us),
        ]);
    }
    s += "\n";
    s += &SERVERS.header();
    for pool in &stats.pools {
        for server in &pool.servers {
            s += &SERVERS.row(&[
                &pool.name,
                &server.addr,
                &rate(server.requests_per_s),
                &server.requests,
                &server.responses,
                &server.connections,
                &server.in_flight,
                &server.failures,
                &server.timeouts,
                &if server.ejected { "out" } else { "in" },
            ]);
        }
    }
    // Compression and the hot-key cache, for the pools that use them.
    const FEATURES: Columns = Columns(&[
        ("POOL", -16),
        ("COMPRESSED", 11),
        ("RATIO", 6),
        ("CPU MS", 8),
        ("CORRUPT", 8),
        ("HITS", 10),
        ("HIT%", 6),
        ("FILLS", 8),
        ("INVALID", 8),
        ("HOT", 5),
    ]);
    let featured: Vec<_> = stats
        .pools
        .iter()
        .filter(|p| !p.features.is_empty())
        .collect();
    if !featured.is_empty() {
        s += "\n";
        s += &FEATURES.header();
        for pool in featured {
            let n = |name: &str| pool.features.get(name).copied().unwrap_or(0);
            let invalidations = n("cache_invalidations_write")
                + n("cache_invalidations_server")
                + n("cache_invalidations_lost");
            let ratio = pool
                .compression_ratio
                .map_or("-".to_owned(), |r| format!("{r:.2}"));
            let hit = pool
                .cache_hit_ratio
                .map_or("-".to_owned(), |r| format!("{:.1}", r * 100.0));
            s += &FEATURES.row(&[
                &pool.name,
                &n("compressed_values"),
                &ratio,
                &(n("compression_ns") / 1_000_000),
                &n("corrupt_values"),
                &n("cache_hits"),
                &hit,
                &n("cache_fills"),
                &invalidations,
                &n("hot_keys"),
            ]);
        }
    }
    if stats.pools.iter().any(|p| !p.hot_keys.is_empty()) {
        // The hottest few (ferroxctl hotkeys lists them all).
        s += "\n";
        s += &render_hot_keys(stats.pools.iter(), TOP_HOT_KEYS);
    }
    if !stats.commands.is_empty() {
        s += "\n";
        s += &COMMANDS.header();
        for c in stats.commands.iter().take(TOP_COMMANDS) {
            s += &COMMANDS.row(&[
                &c.protocol,
                &c.command,
                &rate(c.requests_per_s),
                &c.requests,
            ]);
        }
    }
    s
}

/// Hot keys `ferroxctl stats` and `top` show.
const TOP_HOT_KEYS: usize = 8;

/// The pools' hot keys, hottest first, at most `most`.
fn render_hot_keys<'a>(pools: impl Iterator<Item = &'a admin::PoolStats>, most: usize) -> String {
    const HOT: Columns = Columns(&[("POOL", -16), ("CORE", 5), ("READS/S", 10), ("KEY", -40)]);
    let mut keys: Vec<(&str, &admin::HotKeyStats)> = pools
        .flat_map(|p| p.hot_keys.iter().map(move |h| (p.name.as_str(), h)))
        .collect();
    keys.sort_by_key(|(_, h)| std::cmp::Reverse(h.rate));
    let mut s = HOT.header();
    for (pool, h) in keys.into_iter().take(most) {
        s += &HOT.row(&[&pool, &h.core, &h.rate, &h.key]);
    }
    s
}

fn render_shm(shm: &admin::Shm) -> String {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let mut s = format!(
        "region {}: {} segment(s), {:.1} MiB, {:.1} MiB used, {}\n",
        shm.region,
        shm.segments,
        mib(shm.size_bytes),
        mib(shm.used_bytes),
        if shm.hugepages {
            "hugepages"
        } else {
            "not all on hugepages"
        }
    );
    const CLASSES: Columns = Columns(&[
        ("BUFFERS", -8),
        ("CHUNK", 10),
        ("TOTAL", 8),
        ("IN USE", 8),
        ("FREE", 8),
    ]);
    s += &CLASSES.header();
    for c in &shm.classes {
        s += &CLASSES.row(&[&c.role, &c.chunk_size, &c.total, &c.in_use, &c.free]);
    }
    s
}
