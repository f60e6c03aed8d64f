//! Serving the API (UNIX socket, optional TCP with a token) and `ternd`'s
//! command line.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Parser;
use tokio::net::{TcpListener, UnixListener};

use crate::config::Config;
use crate::daemon::Daemon;
use crate::error::chain;

/// Errors setting up the listeners.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Another daemon serves the socket.
    #[error("another daemon already listens on {0}")]
    InUse(PathBuf),
    /// A listener could not be set up.
    #[error("cannot listen on {what}")]
    Listen {
        /// Where.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The token file could not be read or created.
    #[error("cannot use token file {path}")]
    Token {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// TCP was asked for without a token.
    #[error("--tcp needs --token-file: the API is never served on TCP without authentication")]
    NoToken,
    /// The daemon could not start.
    #[error(transparent)]
    Start(#[from] crate::error::StartError),
    /// The daemon could not join its cluster.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::JoinError),
}

/// Binds the UNIX socket (replacing a stale one, refusing a live one),
/// readable and writable by the owner only.
pub fn bind_unix(path: &Path) -> Result<UnixListener, ServeError> {
    let listen = |source| ServeError::Listen {
        what: path.display().to_string(),
        source,
    };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServeError::InUse(path.into()));
        }
        std::fs::remove_file(path).map_err(listen)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(listen)?;
    }
    let l = UnixListener::bind(path).map_err(listen)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(listen)?;
    Ok(l)
}

/// Reads the token from `path`, creating the file with a fresh random
/// token (mode 0600) if it does not exist.
pub fn load_token(path: &Path) -> Result<String, ServeError> {
    let err = |source| ServeError::Token {
        path: path.into(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        Ok(_) => Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the file is empty",
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token: String = (0..4).map(|_| crate::registry::new_id()).collect();
            std::fs::write(path, format!("{token}\n")).map_err(err)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
            Ok(token)
        }
        Err(e) => Err(err(e)),
    }
}

/// `ternd`: the host daemon.
#[derive(Parser, Debug)]
#[command(
    name = "ternd",
    version,
    about = "Tern host daemon: VM registry, workers, REST API"
)]
pub struct Args {
    /// State directory: the registry (tern.db), worker sockets and logs.
    /// Default: $TERN_STATE_DIR, /var/lib/tern as root, else
    /// ~/.local/state/tern.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// UNIX socket of the API (default: ternd.sock in the state directory).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Also serve the API on TCP at ADDR (e.g. 127.0.0.1:7070); needs
    /// --token-file.
    #[arg(long, requires = "token_file")]
    pub tcp: Option<String>,
    /// File with the bearer token for TCP (created with a random token if
    /// missing).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The `tern` binary that runs VM workers (default: beside ternd).
    #[arg(long)]
    pub worker: Option<PathBuf>,
    /// Probe guest image (default: beside the worker binary).
    #[arg(long)]
    pub probe_image: Option<PathBuf>,
    /// Directory where disk images may live (repeat for several; default:
    /// disks/ in the state directory).
    #[arg(long = "disk-dir")]
    pub disk_dirs: Vec<PathBuf>,
    /// Directory on storage every cluster node reaches at the same path
    /// (repeat for several; also a disk directory): only disks there can
    /// belong to a clustered VM.
    #[arg(long = "shared-dir")]
    pub shared_dirs: Vec<PathBuf>,
    /// Join the failover cluster whose etcd members answer at these client
    /// URLs (comma-separated, e.g. http://10.0.0.1:2379,http://10.0.0.2:2379).
    #[arg(long, value_delimiter = ',', requires = "node")]
    pub cluster: Vec<String>,
    /// This host's node name in the cluster (with --cluster).
    #[arg(long, requires = "cluster")]
    pub node: Option<String>,
    /// Seconds without a lease renewal after which the cluster declares this
    /// node down (with --cluster; at least 2).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub cluster_ttl: u64,
}

/// Runs the daemon until SIGINT or SIGTERM. Workers keep running after it
/// exits; the next daemon finds them again.
pub async fn run(args: Args) -> Result<(), ServeError> {
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(tern_api::client::default_state_dir);
    let worker = args.worker.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("tern")))
            .unwrap_or_else(|| "tern".into())
    });
    let mut cfg = Config::new(state_dir.clone(), worker);
    cfg.probe_image = args.probe_image.clone();
    if !args.disk_dirs.is_empty() {
        cfg.disk_dirs = args.disk_dirs.clone();
    }
    for d in &args.shared_dirs {
        if !cfg.disk_dirs.contains(d) {
            cfg.disk_dirs.push(d.clone());
        }
        cfg.shared_dirs.push(d.clone());
    }
    if args.tcp.is_some() && args.token_file.is_none() {
        return Err(ServeError::NoToken);
    }
    if let Some(a) = args
        .tcp
        .as_deref()
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
    {
        cfg.migration_ip = a.ip();
    }
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| state_dir.join("ternd.sock"));
    // Refuse a live socket before touching the registry.
    if socket.exists() && std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        return Err(ServeError::InUse(socket));
    }
    let daemon = Daemon::open(cfg)?;
    // Joined before serving: a daemon that cannot join exits with nothing
    // registered in etcd and no socket bound.
    if let Some(node) = &args.node {
        let settings = crate::cluster::ClusterSettings {
            endpoints: args.cluster.clone(),
            node: node.clone(),
            ttl: std::time::Duration::from_secs(args.cluster_ttl),
        };
        let api_url = args.tcp.as_ref().map(|a| format!("http://{a}"));
        crate::cluster::join(&daemon, settings, api_url).await?;
    }
    let found = daemon.reattach().await;
    if found > 0 {
        tracing::info!("found {found} running VM workers again");
    }
    daemon.restore_switches().await;
    let unix = bind_unix(&socket)?;
    let mut tasks = tokio::task::JoinSet::new();
    let app = crate::api::router(daemon.clone());
    tasks.spawn(async move { axum::serve(unix, app).await });
    let mut listening = vec![format!("unix:{}", socket.display())];
    if let (Some(addr), Some(token_file)) = (&args.tcp, &args.token_file) {
        let token = load_token(token_file)?;
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Listen {
                what: addr.clone(),
                source,
            })?;
        let local = tcp.local_addr().map_err(|source| ServeError::Listen {
            what: addr.clone(),
            source,
        })?;
        listening.push(format!("http://{local}"));
        let app = crate::api::router_with_token(daemon.clone(), token);
        tasks.spawn(async move { axum::serve(tcp, app).await });
    }
    eprintln!("ternd: listening on {}", listening.join(" and "));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| ServeError::Listen {
            what: "SIGTERM".into(),
            source,
        })?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        r = tasks.join_next() => {
            if let Some(Ok(Err(e))) = r {
                return Err(ServeError::Listen { what: "the API".into(), source: e });
            }
        }
    }
    let _ = std::fs::remove_file(&socket);
    eprintln!("ternd: exiting; VM workers keep running");
    Ok(())
}

/// `ternd`'s entry point; returns the exit code.
pub fn main() -> i32 {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { 64 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TERN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(4)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ternd: error: cannot start the runtime: {e}");
            return 71;
        }
    };
    let r = rt.block_on(run(args));
    // Workers are separate processes; nothing to wait for.
    rt.shutdown_background();
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ternd: error: {}", chain(&e));
            match e {
                ServeError::InUse(_) | ServeError::Listen { .. } => 69,
                ServeError::NoToken => 64,
                ServeError::Cluster(_) => 69,
                _ => 70,
            }
        }
    }
}

/// Runs a daemon on `socket` in this process (for tests and embedding),
/// returning the daemon; the server runs on the current runtime.
pub async fn spawn_in_process(
    cfg: Config,
    socket: &Path,
) -> Result<(Arc<Daemon>, tokio::task::JoinHandle<()>), ServeError> {
    let daemon = Daemon::open(cfg)?;
    daemon.reattach().await;
    let unix = bind_unix(socket)?;
    let app = crate::api::router(daemon.clone());
    let h = tokio::spawn(async move {
        let _ = axum::serve(unix, app).await;
    });
    Ok((daemon, h))
}
