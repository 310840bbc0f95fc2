//! The admin API: an HTTP listener of its own (`admin_listen`) for the control room, every
//! request authenticated with a bearer token read from `admin_token_file`.
//!
//! | request | does |
//! |---|---|
//! | `GET /rounds` | every round: phase, times, interval, prizes and awards so far (JSON) |
//! | `POST /rounds/{id}/go` | open a waiting round now |
//! | `POST /rounds/{id}/extend?by_s=N` | move the close N seconds later |
//! | `POST /rounds/{id}/close` | close now (or cancel a round that has not opened) |
//! | `POST /rounds/{id}/interval?ms=N` | ask phones to keep N ms between shakes |
//! | `POST /rounds/{id}/pause` | stop taking shakes now, keeping the time left |
//! | `POST /rounds/{id}/resume` | open a paused round again for the time it had left |
//! | `POST /rounds/{id}/top-up` | more prizes: a JSON body `{"cash": {..}, "gifts": [..]}` as in the configuration |
//! | `POST /rounds` | add a round: a JSON body with the fields of a configuration's `[[rounds]]` |
//! | `GET /` | the control room's dashboard (a page; give it the token) |
//! | `GET /events?token=T` | server-sent events: a [`Dashboard`] snapshot every second |
//! | `GET /audit` | every recorded command, oldest first (JSON lines) |
//! | `GET /awards?user=U&round=R&prize=P&undelivered=true&limit=N&after=A` | support: matching awards (JSON lines, in id order, at most `limit`, default and cap 10,000; `after`: only ids above A, to read on from a page's last id) |
//! | `GET /awards/export` | settlement: every award (JSON lines, in id order), streamed page by page without stopping anything |
//!
//! A command's `Idempotency-Key` header names it (the same key again gets the first outcome
//! and changes nothing; without one, the allocator draws a key); `X-Shake-Operator` says who
//! asks (default "admin"). Answers: 200 with the command and the round's new timing; 400 a bad
//! value; 401 no or a wrong token; 404 no such round; 409 refused by the round's state (the
//! reason in the body); 503 when this allocator is not leading (a standby) or another command
//! is being recorded (retry); 504 when the allocator did not answer within [`ANSWER_WAIT`] (its
//! ledger not answering: a command may still be recorded later, so send it again with the same
//! `Idempotency-Key` to learn its outcome). The allocator records a command durably before it
//! takes effect; then every edge hears the round's new state.

use shake_ops::bearer::BearerToken;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::award::Award;
use crate::export::{self, AwardQuery, EXPORT_PAGE};
use crate::round_command::{Refusal, RoundAction, RoundCommand, RoundTiming};

/// A request from the admin API to the allocator's actor.
#[derive(Debug)]
pub(crate) enum AdminRequest {
    /// Submit a command (`at_ms` is set by the actor when it takes it).
    Command { command: RoundCommand, reply: oneshot::Sender<CommandReply> },
    /// Every round's state.
    Rounds { reply: oneshot::Sender<Vec<RoundView>> },
    /// The command log.
    Audit { reply: oneshot::Sender<Vec<RoundCommand>> },
    /// Awards from the ledger.
    Awards { query: AwardQuery, reply: oneshot::Sender<Result<Vec<Award>, String>> },
    /// What the dashboard shows.
    Dashboard { reply: oneshot::Sender<Dashboard> },
}

impl AdminRequest {
    /// The caller stopped waiting for the answer (its deadline passed).
    pub(crate) fn caller_gone(&self) -> bool {
        match self {
            AdminRequest::Command { reply, .. } => reply.is_closed(),
            AdminRequest::Rounds { reply } => reply.is_closed(),
            AdminRequest::Audit { reply } => reply.is_closed(),
            AdminRequest::Awards { reply, .. } => reply.is_closed(),
            AdminRequest::Dashboard { reply } => reply.is_closed(),
        }
    }
}

/// One dashboard snapshot (a server-sent event's data, JSON).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Dashboard {
    pub(crate) now_ms: u64,
    /// This allocator serves (false: a standby; nothing else is filled in).
    pub(crate) leading: bool,
    pub(crate) rounds: Vec<RoundView>,
    pub(crate) edges: Vec<EdgeView>,
    /// Counters since this term began: the page shows their rates.
    pub(crate) entries_drawn: u64,
    pub(crate) awards_granted: u64,
    /// Shake to award (durable and answered), milliseconds, median and 99th percentile over
    /// the last 5 s; none without awards.
    pub(crate) award_latency_ms: Option<(u64, u64)>,
    /// The last group commit's duration.
    pub(crate) last_commit_ms: Option<f64>,
}

/// One edge as the allocator sees it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct EdgeView {
    pub(crate) edge_id: u64,
    /// Worker streams open now (0: the edge's link is down).
    pub(crate) streams: usize,
    /// Shakes offered per second at the edge, from its latest load reports.
    pub(crate) offered_per_s: f64,
    /// Phones with a session on the edge (its workers' latest stats).
    pub(crate) phones: u64,
    /// The edge's answers per second, by verdict.
    pub(crate) verdicts_per_s: VerdictRates,
}

/// Answers per second by verdict.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct VerdictRates {
    pub(crate) no_luck: f64,
    pub(crate) slow_down: f64,
    pub(crate) round_closed: f64,
    pub(crate) forwarded: f64,
}

/// The largest request body (a round or a top-up), bytes.
pub const MAX_BODY: usize = 64 * 1024;

/// Support's cap on one `GET /awards`.
pub const AWARDS_LIMIT: usize = 10_000;

/// What became of a command, as the API says it.
#[derive(Debug)]
pub(crate) enum CommandReply {
    /// Recorded and in effect (now, or before under the same key).
    Done { command: RoundCommand, timing: Option<RoundTiming> },
    /// Refused by the rounds' state or a bad value.
    Refused(Refusal),
    /// Another command is being recorded.
    Busy,
}

/// One round, for `GET /rounds` and the dashboard.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RoundView {
    pub(crate) round_id: u32,
    pub(crate) phase: &'static str,
    pub(crate) starts_at_ms: u64,
    pub(crate) ends_at_ms: u64,
    pub(crate) min_shake_interval_ms: u32,
    /// When the pause in force began, if paused.
    pub(crate) paused_at_ms: Option<u64>,
    /// Open time the round has left, milliseconds (pauses not counted).
    pub(crate) left_ms: u64,
    pub(crate) prizes: usize,
    pub(crate) awarded: usize,
    pub(crate) cash_left_cents: u64,
    pub(crate) gifts_left: usize,
}

/// Where admin requests go: the actor of the leadership term now serving, if any.
pub(crate) type AdminTarget = Arc<Mutex<Option<mpsc::Sender<AdminRequest>>>>;

/// The longest an admin request waits for the serving term's answer. A command is answered
/// once recorded and a support read once the ledger has read it, so a database that stops
/// answering would otherwise hold every such request (and the control room's page) for as long
/// as it hangs.
pub const ANSWER_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct Api {
    token: BearerToken,
    target: AdminTarget,
    /// [`ANSWER_WAIT`], shorter in tests.
    answer_wait: Duration,
}

/// Serves the admin API on `addr` until `stop`; the address bound.
pub(crate) async fn spawn(
    addr: SocketAddr,
    token: BearerToken,
    target: AdminTarget,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let api = Api { token, target, answer_wait: ANSWER_WAIT };
    let app = Router::new()
        .route("/", get(page))
        .route("/events", get(events))
        .route("/rounds", get(rounds).post(add_round))
        .route("/rounds/{id}/{action}", post(command))
        .route("/audit", get(audit))
        .route("/awards", get(awards))
        .route("/awards/export", get(export_awards))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(api);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(shake_ops::http::serve_router(listener, app, stop));
    Ok(bound)
}

fn json(status: StatusCode, body: &impl Serialize) -> Response {
    let text = serde_json::to_string(body).unwrap_or_default() + "\n";
    (status, [(header::CONTENT_TYPE, "application/json")], text).into_response()
}

fn error(status: StatusCode, why: &str) -> Response {
    json(status, &serde_json::json!({ "error": why }))
}

impl Api {
    fn authorized(&self, headers: &HeaderMap) -> bool {
        self.token.admits(headers)
    }

    /// Sends a request to the serving term and waits for its answer, at most `answer_wait`.
    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<T>) -> AdminRequest,
    ) -> Result<T, Response> {
        let target = crate::service::lock(&self.target).clone();
        let Some(target) = target else {
            return Err(error(StatusCode::SERVICE_UNAVAILABLE, "not leading: ask the leader"));
        };
        let asked = async {
            let (reply, answer) = oneshot::channel();
            if target.send(request(reply)).await.is_err() {
                return Err(error(StatusCode::SERVICE_UNAVAILABLE, "the allocator is stopping"));
            }
            answer
                .await
                .map_err(|_| error(StatusCode::SERVICE_UNAVAILABLE, "the allocator stopped"))
        };
        match tokio::time::timeout(self.answer_wait, asked).await {
            Ok(answer) => answer,
            Err(_) => Err(error(
                StatusCode::GATEWAY_TIMEOUT,
                &format!(
                    "no answer within {:?}: the ledger may not be answering; a command may \
                     still be recorded, so send it again with the same Idempotency-Key to \
                     learn its outcome",
                    self.answer_wait
                ),
            )),
        }
    }
}

/// The dashboard page (no secret in it: its data needs the token).
async fn page() -> Response {
    let html = include_str!("dashboard/index.html");
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

#[derive(Debug, serde::Deserialize)]
struct EventsQuery {
    token: Option<String>,
}

/// A snapshot a second, for as long as the page stays (an `EventSource` cannot send headers,
/// so the token comes in the query).
async fn events(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Response {
    let by_query = query.token.is_some_and(|t| api.token.is(&t));
    if !by_query && !api.authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "a token is needed");
    }
    let snapshots = futures_util::stream::unfold((api, true), |(api, first)| async move {
        if !first {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let event = match api.ask(|reply| AdminRequest::Dashboard { reply }).await {
            Ok(snapshot) => {
                Event::default().data(serde_json::to_string(&snapshot).unwrap_or_default())
            }
            // The serving term did not answer in time (its ledger hangs): a comment, which the
            // page ignores, so it keeps the last true snapshot rather than showing a standby
            // with nothing drawn.
            Err(response) if response.status() == StatusCode::GATEWAY_TIMEOUT => {
                Event::default().comment("no answer from the allocator in time")
            }
            // Not leading, or stopping: what a standby's page shows.
            Err(_) => {
                let standby =
                    Dashboard { now_ms: crate::service::now_ms(), ..Dashboard::default() };
                Event::default().data(serde_json::to_string(&standby).unwrap_or_default())
            }
        };
        Some((Ok::<_, std::convert::Infallible>(event), (api, false)))
    });
    Sse::new(snapshots).keep_alive(KeepAlive::default()).into_response()
}

async fn rounds(State(api): State<Api>, headers: HeaderMap) -> Response {
    if !api.authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "a bearer token is needed");
    }
    match api.ask(|reply| AdminRequest::Rounds { reply }).await {
        Ok(rounds) => json(StatusCode::OK, &rounds),
        Err(response) => response,
    }
}

async fn audit(State(api): State<Api>, headers: HeaderMap) -> Response {
    if !api.authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "a bearer token is needed");
    }
    match api.ask(|reply| AdminRequest::Audit { reply }).await {
        Ok(log) => {
            let lines: String =
                log.iter().map(|c| serde_json::to_string(c).unwrap_or_default() + "\n").collect();
            ([(header::CONTENT_TYPE, "application/x-ndjson")], lines).into_response()
        }
        Err(response) => response,
    }
}

async fn awards(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(mut query): Query<AwardQuery>,
) -> Response {
    if query.limit == 0 || query.limit > AWARDS_LIMIT {
        query.limit = AWARDS_LIMIT;
    }
    read_awards(&api, &headers, query).await
}

async fn export_awards(
    State(api): State<Api>,
    version: axum::http::Version,
    headers: HeaderMap,
) -> Response {
    if !api.authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "a bearer token is needed");
    }
    // Without chunked encoding (HTTP/1.0) a body cut short reads as a whole, shorter export.
    if version < axum::http::Version::HTTP_11 {
        return error(
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            "the export streams: use HTTP/1.1, so that one cut short can be told",
        );
    }
    export_body(api, EXPORT_PAGE, EXPORT_PAGE_RETRY).await
}

/// How many times an export's page is asked for while the ledger is busy, before the export is
/// cut short, and how long apart.
const EXPORT_PAGE_TRIES: u32 = 20;
const EXPORT_PAGE_RETRY: Duration = Duration::from_millis(250);

/// Every award as JSON lines, streamed page by page ([`export::EXPORT_PAGE`]): one page
/// is held at a time. The first page decides the status; a later page that cannot be read
/// ends the body with an error, so the client sees an export cut short (an incomplete chunked
/// body), never a short one that looks whole.
async fn export_body(api: Api, size: usize, retry: Duration) -> Response {
    let first = match export_page_of(&api, 0, size, retry).await {
        Ok(page) => page,
        Err(response) => return response,
    };
    let after = export::next_page_after(&first, size);
    let first = futures_util::stream::once(std::future::ready(Ok::<_, std::io::Error>(
        export::award_lines(&first),
    )));
    let rest = futures_util::stream::try_unfold((api, after), move |(api, after)| async move {
        let Some(after) = after else { return Ok(None) };
        let page = export_page_of(&api, after, size, retry).await.map_err(|_| {
            std::io::Error::other("the export was cut short: the ledger stopped answering")
        })?;
        let next = export::next_page_after(&page, size);
        Ok(Some((export::award_lines(&page), (api, next))))
    });
    let body = axum::body::Body::from_stream(futures_util::StreamExt::chain(first, rest));
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

/// An export's page after `after`, asked again while the ledger is busy.
async fn export_page_of(
    api: &Api,
    after: u64,
    size: usize,
    retry: Duration,
) -> Result<Vec<Award>, Response> {
    let mut tries = 1;
    loop {
        let query = export::export_page(after, size);
        match api.ask(|reply| AdminRequest::Awards { query, reply }).await? {
            Ok(page) => return Ok(page),
            Err(why) if tries >= EXPORT_PAGE_TRIES => {
                return Err(error(StatusCode::SERVICE_UNAVAILABLE, &why));
            }
            Err(_) => {
                tries += 1;
                tokio::time::sleep(retry).await;
            }
        }
    }
}

async fn read_awards(api: &Api, headers: &HeaderMap, query: AwardQuery) -> Response {
    if !api.authorized(headers) {
        return error(StatusCode::UNAUTHORIZED, "a bearer token is needed");
    }
    match api.ask(|reply| AdminRequest::Awards { query, reply }).await {
        Ok(Ok(awards)) => {
            ([(header::CONTENT_TYPE, "application/x-ndjson")], export::award_lines(&awards))
                .into_response()
        }
        Ok(Err(why)) => error(StatusCode::SERVICE_UNAVAILABLE, &why),
        Err(response) => response,
    }
}

#[derive(Debug, serde::Deserialize)]
struct CommandQuery {
    by_s: Option<u64>,
    ms: Option<u32>,
}

/// A top-up's body.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TopUpBody {
    #[serde(default)]
    cash: Option<crate::config::CashPool>,
    #[serde(default)]
    gifts: Vec<crate::config::GiftPool>,
}

async fn command(
    State(api): State<Api>,
    Path((round_id, action)): Path<(u32, String)>,
    Query(query): Query<CommandQuery>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    if !api.authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "a bearer token is needed");
    }
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let action = match (action.as_str(), query.by_s, query.ms) {
        ("go", _, _) => RoundAction::Go,
        ("close", _, _) => RoundAction::Close,
        ("pause", _, _) => RoundAction::Pause,
        ("resume", _, _) => RoundAction::Resume,
        ("extend", Some(by_s), _) => RoundAction::Extend { by_ms: by_s.saturating_mul(1000) },
        ("interval", _, Some(ms)) => RoundAction::Interval { ms },
        ("extend", None, _) => return error(StatusCode::BAD_REQUEST, "extend needs ?by_s=N"),
        ("interval", _, None) => return error(StatusCode::BAD_REQUEST, "interval needs ?ms=N"),
        ("top-up", _, _) => match serde_json::from_slice::<TopUpBody>(&body) {
            Ok(TopUpBody { cash, gifts }) => RoundAction::TopUp { cash, gifts },
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("top-up body: {e}")),
        },
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "actions: go, extend, close, interval, pause, resume, top-up",
            );
        }
    };
    submit(&api, &headers, round_id, action).await
}

async fn add_round(State(api): State<Api>, headers: HeaderMap, body: axum::body::Body) -> Response {
    if !api.authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "a bearer token is needed");
    }
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    match serde_json::from_slice::<crate::config::RoundConfig>(&body) {
        Ok(round) => submit(&api, &headers, round.id, RoundAction::Add { round }).await,
        Err(e) => error(StatusCode::BAD_REQUEST, &format!("round body: {e}")),
    }
}

/// How long a request's body may take to arrive once its head has.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// A command's body, read only once its sender is known to hold the token (read first, a
/// body that never came held one of the listener's few connections for anyone), within
/// [`MAX_BODY`] and [`BODY_TIMEOUT`].
async fn read_body(body: axum::body::Body) -> Result<axum::body::Bytes, Response> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(error(StatusCode::PAYLOAD_TOO_LARGE, "a body of at most 64 KiB")),
        Err(_) => Err(error(StatusCode::REQUEST_TIMEOUT, "the body did not come in time")),
    }
}

/// Submits a command named by the request's headers and answers with what became of it.
async fn submit(api: &Api, headers: &HeaderMap, round_id: u32, action: RoundAction) -> Response {
    let header_text = |name: &str| {
        headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned).filter(|v| !v.is_empty())
    };
    // A key that is there but unreadable (not visible ASCII) is refused, not replaced: a fresh
    // key on each retry would apply the command once per retry. An empty one the book refuses.
    let command_id = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => format!("auto-{:016x}", rand::random::<u64>()),
        Some(Ok(key)) => key.to_owned(),
        Some(Err(_)) => {
            return error(StatusCode::BAD_REQUEST, "Idempotency-Key: visible ASCII only");
        }
    };
    let command = RoundCommand {
        command_id,
        round_id,
        action,
        issued_by: header_text("x-shake-operator").unwrap_or_else(|| "admin".to_owned()),
        at_ms: 0,
    };
    match api.ask(|reply| AdminRequest::Command { command, reply }).await {
        Ok(CommandReply::Done { command, timing }) => json(
            StatusCode::OK,
            &serde_json::json!({ "command": command, "timing": timing.map(|t| {
                serde_json::json!({
                    "starts_at_ms": t.starts_at_ms,
                    "ends_at_ms": t.ends_at_ms,
                    "paused_at_ms": t.paused_at_ms,
                    "min_shake_interval_ms": t.min_shake_interval_ms,
                })
            }) }),
        ),
        Ok(CommandReply::Refused(refusal)) => {
            let status = match refusal {
                Refusal::UnknownRound(_) => StatusCode::NOT_FOUND,
                Refusal::Invalid(_) => StatusCode::BAD_REQUEST,
                _ => StatusCode::CONFLICT,
            };
            error(status, &refusal.to_string())
        }
        Ok(CommandReply::Busy) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "another command is being recorded: retry")
        }
        Err(response) => response,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use shake_proto::Prize;

    use super::*;
    use crate::award::BatchKey;

    fn award(award_id: u64) -> Award {
        Award {
            award_id,
            round_id: 1,
            user_id: 100 + award_id,
            item: award_id as u32,
            prize: Prize::Cash { cents: 5 },
            batch: BatchKey { edge_id: 1, worker_id: 0, instance_id: 1, seq: award_id },
            entry_index: 0,
            granted_at_ms: 0,
            delivered: false,
        }
    }

    /// A serving term that answers support's reads from `awards`: "busy" for the first
    /// `busy` reads, and failing every read past `fails_after` (an id) if given. Counts reads.
    fn term(awards: Vec<Award>, busy: usize, fails_after: Option<u64>) -> (Api, Arc<AtomicUsize>) {
        let (tx, mut rx) = mpsc::channel(4);
        let reads = Arc::new(AtomicUsize::new(0));
        let counted = reads.clone();
        tokio::spawn(async move {
            while let Some(request) = rx.recv().await {
                let AdminRequest::Awards { query, reply } = request else { continue };
                let n = counted.fetch_add(1, Ordering::Relaxed);
                let answer = if n < busy {
                    Err("the ledger is busy: retry".to_owned())
                } else if fails_after.is_some_and(|id| query.after >= id) {
                    Err("the ledger is gone".to_owned())
                } else {
                    Ok(awards
                        .iter()
                        .filter(|a| query.matches(a))
                        .take(query.most())
                        .cloned()
                        .collect())
                };
                let _ = reply.send(answer);
            }
        });
        (api_over(Some(tx), ANSWER_WAIT), reads)
    }

    async fn ids(response: Response) -> Result<Vec<u64>, axum::Error> {
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
        Ok(String::from_utf8(body.to_vec())
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .map(|row| row["award_id"].as_u64().unwrap())
            .collect())
    }

    const QUICK: Duration = Duration::from_millis(1);

    #[tokio::test]
    async fn an_export_streams_every_award_once_page_by_page() {
        let awards: Vec<Award> = (1..=5).map(award).collect();
        // Pages of two: 2, 2, 1 (the short page ends it); the first two reads find it busy.
        let (api, reads) = term(awards.clone(), 2, None);
        let response = export_body(api, 2, QUICK).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(ids(response).await.unwrap(), vec![1, 2, 3, 4, 5]);
        assert_eq!(reads.load(Ordering::Relaxed), 2 + 3, "two busy answers, then three pages");
        // A ledger that is a whole number of pages: one more read finds the end.
        let (api, reads) = term(awards[..4].to_vec(), 0, None);
        assert_eq!(ids(export_body(api, 2, QUICK).await).await.unwrap(), vec![1, 2, 3, 4]);
        assert_eq!(reads.load(Ordering::Relaxed), 3);
        let (api, _) = term(Vec::new(), 0, None);
        assert_eq!(ids(export_body(api, 2, QUICK).await).await.unwrap(), Vec::<u64>::new());
    }

    #[tokio::test]
    async fn an_export_that_cannot_read_on_is_cut_short_not_ended() {
        let awards: Vec<Award> = (1..=5).map(award).collect();
        // The first page fails: the status says so.
        let (api, reads) = term(awards.clone(), 0, Some(0));
        let response = export_body(api, 2, QUICK).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reads.load(Ordering::Relaxed), EXPORT_PAGE_TRIES as usize);
        // A later page fails: the body ends in an error, not as a shorter export.
        let (api, _) = term(awards, 0, Some(2));
        let response = export_body(api, 2, QUICK).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(ids(response).await.is_err(), "an export cut short must not read as whole");
    }
    /// A serving term that takes every request and answers none (its ledger hangs); the
    /// requests are kept, so the API is not told "stopped" by a dropped reply.
    fn silent_term(answer_wait: Duration) -> (Api, Arc<Mutex<Vec<AdminRequest>>>) {
        let (tx, mut rx) = mpsc::channel(4);
        let held = Arc::new(Mutex::new(Vec::new()));
        let keep = held.clone();
        tokio::spawn(async move {
            while let Some(request) = rx.recv().await {
                keep.lock().unwrap().push(request);
            }
        });
        (api_over(Some(tx), answer_wait), held)
    }

    /// The API over `target` (none: not leading), waiting `answer_wait` for answers.
    fn api_over(target: Option<mpsc::Sender<AdminRequest>>, answer_wait: Duration) -> Api {
        let token = BearerToken::new("a-token-of-16-bytes").unwrap();
        Api { token, target: Arc::new(Mutex::new(target)), answer_wait }
    }

    #[tokio::test]
    async fn a_term_that_never_answers_gets_a_gateway_timeout_not_a_wait() {
        let wait = Duration::from_millis(200);
        let (api, held) = silent_term(wait);
        let started = std::time::Instant::now();
        let read = tokio::time::timeout(wait * 20, api.ask(|reply| AdminRequest::Rounds { reply }))
            .await
            .expect("the API waited on for the answer");
        let waited = started.elapsed();
        let response = read.expect_err("no answer came");
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(waited >= wait && waited < wait * 10, "waited {waited:?}");
        assert_eq!(held.lock().unwrap().len(), 1, "the request reached the term");
        assert!(held.lock().unwrap()[0].caller_gone(), "and its caller is gone: the term skips it");
        // A support read and an export's first page end the same way, with their status.
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer a-token-of-16-bytes".parse().unwrap());
        let response = read_awards(&api, &headers, AwardQuery::default()).await;
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        let response = export_body(api.clone(), 2, QUICK).await;
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    }

    /// The page's event stream, from a term that does not answer in time, carries a comment
    /// (which the page ignores, keeping its last snapshot), not an empty standby's snapshot;
    /// from no term at all, the standby's.
    #[tokio::test]
    async fn the_page_is_not_shown_a_standby_when_its_leader_does_not_answer() {
        use futures_util::StreamExt;
        let first_event = |api: Api| async move {
            let query = EventsQuery { token: Some("a-token-of-16-bytes".into()) };
            let response = events(State(api), HeaderMap::new(), Query(query)).await;
            assert_eq!(response.status(), StatusCode::OK);
            let mut body = response.into_body().into_data_stream();
            let chunk = tokio::time::timeout(Duration::from_secs(5), body.next()).await;
            String::from_utf8(chunk.unwrap().unwrap().unwrap().to_vec()).unwrap()
        };
        let (api, _held) = silent_term(Duration::from_millis(100));
        let event = first_event(api).await;
        assert!(event.starts_with(':') && !event.contains("data:"), "{event:?}");
        let event = first_event(api_over(None, ANSWER_WAIT)).await;
        assert!(event.contains("\"leading\":false"), "{event:?}");
    }

    #[tokio::test]
    async fn a_term_whose_request_queue_stays_full_gets_a_gateway_timeout() {
        // Nobody reads the queue: the send itself waits, and the deadline covers it.
        let (tx, _rx) = mpsc::channel(1);
        let (filler, _) = oneshot::channel();
        tx.try_send(AdminRequest::Rounds { reply: filler }).unwrap();
        let wait = Duration::from_millis(100);
        let api = api_over(Some(tx), wait);
        let asked = api.ask(|reply| AdminRequest::Audit { reply });
        let response = tokio::time::timeout(wait * 20, asked)
            .await
            .expect("the API waited on for room in the queue")
            .unwrap_err();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    }
}
