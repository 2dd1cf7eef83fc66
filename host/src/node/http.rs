//! The node's HTTP endpoints, on the node's tokio runtime (axum over
//! hyper: the HTTP parsing of untrusted bytes is theirs).
//!
//! - `host node --metrics ADDR`: `GET /metrics`, the Prometheus text format
//!   (see `metrics`). Anything else is 404; only GET.
use super::Node;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::os::unix::fs::DirBuilderExt as _;
use std::sync::Arc;

/// Serves `/metrics` on `listener` until the node's runtime stops.
pub fn serve_metrics(node: &Arc<Node>, listener: std::net::TcpListener) -> std::io::Result<std::net::SocketAddr> {
    let served = node.clone();
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let node = served.clone();
            async move {
                // Reading the shards waits on their threads: off the
                // runtime's workers.
                match tokio::task::spawn_blocking(move || super::metrics::render(&node)).await {
                    Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response(),
                    Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                }
            }
        }),
    );
    spawn_server(node, listener, app, "the metrics endpoint")
}

/// Serves `app` on `listener` on the node's runtime until it stops; the
/// address it listens on.
fn spawn_server(node: &Node, listener: std::net::TcpListener, app: Router, what: &'static str) -> std::io::Result<std::net::SocketAddr> {
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let _guard = node.tokio.enter();
    let listener = tokio::net::TcpListener::from_std(listener)?;
    node.tokio.spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("{what} stopped: {e}");
        }
    });
    Ok(addr)
}

/// The token file in a data directory: the web view's secret.
pub const TOKEN_FILE: &str = "http.token";
/// Most reactors the view lists (the counts are whole).
const MAX_ROWS: usize = 500;
/// Most failed reactors the view lists.
const MAX_FAILED: usize = 50;
/// How often the view's event stream sends the state.
const EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The view's page (HTML, CSS and JavaScript in one file: no build step,
/// nothing fetched from elsewhere).
const PAGE: &str = include_str!("view.html");

/// The web view's token: made at the first `--http` start (32 random
/// bytes, hex), kept in `<data-dir>/http.token` (`0600`, written durably)
/// so its owner can find it again; read back (checked) at later starts.
pub fn token(data_dir: &std::path::Path) -> Result<String, String> {
    let path = data_dir.join(TOKEN_FILE);
    match reactor_runtime::local_fs::read_file(&path, "the web view's token", 256, reactor_runtime::local_fs::Access::Private) {
        Ok((bytes, _)) => {
            let t = String::from_utf8(bytes).map_err(|_| format!("{} is not text", path.display()))?;
            let t = t.trim().to_owned();
            if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(t)
            } else {
                Err(format!("{} is not a token (64 hex digits)", path.display()))
            }
        }
        Err(reactor_runtime::local_fs::FileError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            let mut raw = [0u8; 32];
            getrandom::fill(&mut raw).map_err(|e| format!("no randomness for the token: {e}"))?;
            let t = hex::encode(raw);
            super::durable::write_durably(data_dir, TOKEN_FILE, t.as_bytes()).map_err(|w| format!("cannot write {}: {}", path.display(), w.source))?;
            Ok(t)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Whether a request carries `token` (`?token=` or `Authorization:
/// Bearer`), compared in constant time.
fn authorized(token: &str, query: &std::collections::HashMap<String, String>, headers: &axum::http::HeaderMap) -> bool {
    let given = query.get("token").map(String::as_str).or_else(|| {
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
    });
    let Some(given) = given else { return false };
    given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// The view's state: this node, the overlay as it sees it, its reactors,
/// counters, failures and moves in progress.
pub fn state(node: &Node) -> serde_json::Value {
    use serde_json::json;
    let info = node.info();
    let members = node.transport.members();
    let mut edges = Vec::new();
    for m in &members {
        if m.info.id == info.id || !m.up {
            continue;
        }
        // Reached directly, or through the member `via` names.
        let from = m.via.filter(|v| *v != m.info.id).unwrap_or(info.id);
        edges.push(json!([from, m.info.id]));
    }
    let stats = node.runtime.stats();
    let (rows, failed) = node.runtime.rows(MAX_FAILED);
    let load = node.runtime.load_summary();
    let reactors: Vec<serde_json::Value> = rows
        .iter()
        .take(MAX_ROWS)
        .map(|r| {
            let module = node.runtime.engine().name_of(&r.module).unwrap_or_else(|| r.module.to_hex()[..12].to_owned());
            json!({
                "address": r.address.to_string(), "module": module, "memory": r.memory, "queued": r.queued,
                "journal": r.journal.map(|l| l.name()),
            })
        })
        .collect();
    // Gone for good (failed, not restarted), then the recent failures of
    // journaled reactors (restarted by their supervisor, newest first).
    let secs = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let mut failures: Vec<serde_json::Value> =
        failed.iter().map(|(a, f)| json!({"address": a.to_string(), "reason": f.reason.to_string(), "gone": true})).collect();
    failures.extend(node.supervisor.recent_failures().into_iter().rev().map(|(t, a, why)| {
        json!({"address": a.to_string(), "reason": why, "at": secs(t), "gone": node.runtime.state(a) != Some(reactor_runtime::ReactorState::Running)})
    }));
    failures.truncate(MAX_FAILED);
    for f in &mut failures {
        if let Some(r) = f["reason"].as_str() {
            f["reason"] = json!(short_reason(r));
        }
    }
    let migrating: Vec<String> = node.hub.moving().iter().map(|a| a.to_string()).collect();
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    json!({
        "at": at,
        "node": {"id": info.id, "name": info.name, "addr": info.addr.to_string(), "incarnation": info.incarnation},
        "cluster": node.config.cluster,
        "overlay": node.config.overlay.to_string(),
        "members": members.iter().map(|m| json!({
            "id": m.info.id, "name": m.info.name, "addr": m.info.addr.to_string(), "up": m.up, "via": m.via,
        })).collect::<Vec<_>>(),
        "edges": edges,
        "counters": {
            "live": stats.live, "failed": stats.failed, "delivered": stats.delivered, "sent_remote": stats.remote,
            "dead_letters": stats.dead_letters + node.transport.dead_letters(), "error_replies": stats.error_replies,
        },
        "load": {"reactors": load.reactors, "queued": load.queued, "max_queued": load.max_queued, "memory": load.memory},
        "reactors": reactors,
        "reactors_total": rows.len(),
        "failures": failures,
        "migrating": migrating,
        "migrations": node.hub.counters(),
    })
}

/// A failure's reason without its backtrace (the first lines up to the
/// wasm backtrace), at most 300 bytes: a post-mortem bundle has the rest.
fn short_reason(r: &str) -> String {
    let r = r.split("error while executing at wasm backtrace").next().unwrap_or(r);
    let r = r.split("\nwasm backtrace").next().unwrap_or(r).trim();
    let mut end = r.len().min(300);
    while !r.is_char_boundary(end) {
        end -= 1;
    }
    let mut s = r[..end].replace('\n', " ");
    if end < r.len() {
        s.push('…');
    }
    s
}

/// What the view's buttons ask.
#[derive(Debug, serde::Deserialize)]
struct Action {
    address: String,
    /// For a move: the node to move it to.
    to: Option<u16>,
}

/// Runs an action of the view on a blocking thread (each waits on shards
/// or the network); `Err` with a message for the page.
fn act(node: &Arc<Node>, what: &str, a: &Action) -> Result<serde_json::Value, String> {
    use serde_json::json;
    let address: reactor_runtime::Address = a.address.parse().map_err(|e| format!("{e}"))?;
    if !address.is_reactor() {
        return Err(format!("{address} is not a reactor"));
    }
    match what {
        "snapshot" => {
            let dir = node.config.data_dir.join("snapshots");
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
            let path = dir.join(format!("{:016x}-{ms}.snap", address.0));
            node.snapshot(Some(vec![address]), &path, false, false).map_err(|e| e.to_string())
        }
        "migrate" => {
            let to = a.to.ok_or("say which node to move it to")?;
            let r = node.migrate(address, to, super::migrate::MigrateOptions::default(), &mut |_| {}).map_err(|e| e.to_string())?;
            Ok(json!({"moved": r.address, "to": r.to, "downtime_ms": r.downtime_ms, "total_ms": r.total_ms}))
        }
        "stop" => {
            if node.runtime.state(address) != Some(reactor_runtime::ReactorState::Running) {
                return Err(format!("no live reactor {address} on this node"));
            }
            node.supervisor.stop(address);
            Ok(json!({"stopping": address.to_string()}))
        }
        _ => Err(format!("no action {what}")),
    }
}

/// Serves the live cluster view on `listener` until the node's runtime
/// stops: `/` the page, `/api/state` the state (JSON), `/api/events` the
/// state every second (server-sent events), `POST /api/{snapshot,
/// migrate,stop}` the actions. Every request must carry `token`.
pub fn serve_view(node: &Arc<Node>, listener: std::net::TcpListener, token: String) -> std::io::Result<std::net::SocketAddr> {
    use axum::extract::{Path as UrlPath, Query};
    use axum::http::HeaderMap;
    use axum::response::sse::{Event, KeepAlive, Sse};
    use axum::routing::post;
    use std::collections::HashMap;
    type Q = Query<HashMap<String, String>>;
    let token = Arc::new(token);
    let refused = || (StatusCode::UNAUTHORIZED, "a token is needed: open the address the node printed (…/?token=…)").into_response();
    let (t1, t2, t3, t4) = (token.clone(), token.clone(), token.clone(), token);
    let (n2, n3, n4) = (node.clone(), node.clone(), node.clone());
    let app = Router::new()
        .route(
            "/",
            get(move |q: Q, h: HeaderMap| async move {
                if !authorized(&t1, &q, &h) {
                    return refused();
                }
                ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], PAGE).into_response()
            }),
        )
        .route(
            "/api/state",
            get(move |q: Q, h: HeaderMap| async move {
                if !authorized(&t2, &q, &h) {
                    return refused();
                }
                let node = n2.clone();
                match tokio::task::spawn_blocking(move || state(&node)).await {
                    Ok(v) => axum::Json(v).into_response(),
                    Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                }
            }),
        )
        .route(
            "/api/events",
            get(move |q: Q, h: HeaderMap| async move {
                if !authorized(&t3, &q, &h) {
                    return refused();
                }
                let node = n3.clone();
                let stream = futures_util::stream::unfold(node, |node| async move {
                    let n = node.clone();
                    let v = tokio::task::spawn_blocking(move || state(&n)).await.unwrap_or(serde_json::Value::Null);
                    tokio::time::sleep(EVERY).await;
                    Some((Ok::<_, std::convert::Infallible>(Event::default().data(v.to_string())), node))
                });
                Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
            }),
        )
        .route(
            "/api/{action}",
            post(move |UrlPath(what): UrlPath<String>, q: Q, h: HeaderMap, body: axum::body::Bytes| async move {
                if !authorized(&t4, &q, &h) {
                    return refused();
                }
                let Ok(a) = serde_json::from_slice::<Action>(&body) else {
                    return (StatusCode::BAD_REQUEST, "the body must be JSON: {\"address\": \"#1.0:1\", \"to\": 2}").into_response();
                };
                let node = n4.clone();
                match tokio::task::spawn_blocking(move || act(&node, &what, &a)).await {
                    Ok(Ok(v)) => axum::Json(v).into_response(),
                    Ok(Err(e)) => (StatusCode::UNPROCESSABLE_ENTITY, e).into_response(),
                    Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                }
            }),
        )
        // A request body is an action's few bytes.
        .layer(axum::extract::DefaultBodyLimit::max(4096));
    spawn_server(node, listener, app, "the web view")
}
