//! `showdown pr-comment` against a local fake of GitHub's REST API (GitHub is
//! unreachable here): an axum server that answers like GitHub, pages its
//! comment list two at a time, and checks what it receives — the token on
//! every request, the JSON bodies, create once then update in place. Each
//! comment has an author; `GET /user` names the token's account (or, like
//! GitHub for an installation token, refuses it).

use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::compare::database;
use crate::util::{Run, TestEnv};

const TOKEN: &str = "ghp_test_secret_0123456789";
const PAGE_SIZE: usize = 2;

/// One request the fake received.
#[derive(Debug, Clone)]
struct Seen {
    method: &'static str,
    path: String,
    authorization: Option<String>,
    body: Option<Value>,
}

/// The account a personal token belongs to.
const TOKEN_USER: &str = "showdown-bot";
/// A person on the PR.
const HUMAN: &str = "alice";

/// A comment on PR 7.
#[derive(Debug, Clone)]
struct StoredComment {
    id: u64,
    author: String,
    body: String,
}

#[derive(Default)]
struct FakeState {
    base_url: String,
    /// Each comment on PR 7, oldest first.
    comments: Vec<StoredComment>,
    next_id: u64,
    seen: Vec<Seen>,
    /// When set, every request is answered with it.
    failure: Option<Failure>,
    /// The token is an installation token (Actions' GITHUB_TOKEN): `/user`
    /// is refused and comments are `github-actions[bot]`'s.
    installation: bool,
    /// When set, the comment list is answered 200 with this raw body.
    garbled_listing: Option<String>,
}

impl FakeState {
    fn token_login(&self) -> &'static str {
        if self.installation {
            "github-actions[bot]"
        } else {
            TOKEN_USER
        }
    }
}

/// A refusal the fake gives: status, JSON body, headers.
#[derive(Clone)]
struct Failure {
    status: u16,
    body: Value,
    headers: Vec<(&'static str, String)>,
}

type Shared = Arc<Mutex<FakeState>>;

/// The fake GitHub, serving on a loopback port from its own runtime.
struct FakeGithub {
    state: Shared,
    url: String,
    _runtime: tokio::runtime::Runtime,
}

impl FakeGithub {
    /// Comments by a person, then the server.
    fn start(existing: &[&str]) -> Self {
        let by_human: Vec<(&str, &str)> = existing.iter().map(|b| (HUMAN, *b)).collect();
        Self::start_with(&by_human)
    }

    /// (author, body) comments, then the server.
    fn start_with(existing: &[(&str, &str)]) -> Self {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(FakeState {
            base_url: url.clone(),
            comments: existing
                .iter()
                .enumerate()
                .map(|(i, (author, body))| StoredComment {
                    id: 100 + i as u64,
                    author: author.to_string(),
                    body: body.to_string(),
                })
                .collect(),
            next_id: 500,
            ..Default::default()
        }));
        let app = Router::new()
            .route("/user", get(current_user))
            .route(
                "/repos/{owner}/{repo}/issues/{number}/comments",
                get(list_comments).post(create_comment),
            )
            .route(
                "/repos/{owner}/{repo}/issues/comments/{id}",
                patch(update_comment),
            )
            .with_state(state.clone());
        runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            state,
            url,
            _runtime: runtime,
        }
    }

    fn fail_with(&self, status: u16, message: &str, headers: Vec<(&'static str, String)>) {
        self.state.lock().unwrap().failure = Some(Failure {
            status,
            body: json!({"message": message, "documentation_url": "https://docs.github.com/rest"}),
            headers,
        });
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    fn comments(&self) -> Vec<(u64, String)> {
        self.state
            .lock()
            .unwrap()
            .comments
            .iter()
            .map(|c| (c.id, c.body.clone()))
            .collect()
    }
}

/// GitHub's user object (`GET /user`'s shape; comments carry its first part).
fn user_json(login: &str, full: bool) -> Value {
    let id = if login.ends_with("[bot]") {
        41898282
    } else if login == HUMAN {
        7
    } else {
        1
    };
    let user = format!("https://api.github.com/users/{login}");
    let mut json = json!({
        "login": login, "id": id, "node_id": format!("U_{id}"),
        "avatar_url": format!("https://avatars.githubusercontent.com/u/{id}"),
        "gravatar_id": "", "url": user,
        "html_url": format!("https://github.com/{login}"),
        "followers_url": format!("{user}/followers"),
        "following_url": format!("{user}/following{{/other_user}}"),
        "gists_url": format!("{user}/gists{{/gist_id}}"),
        "starred_url": format!("{user}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{user}/subscriptions"),
        "organizations_url": format!("{user}/orgs"),
        "repos_url": format!("{user}/repos"),
        "events_url": format!("{user}/events{{/privacy}}"),
        "received_events_url": format!("{user}/received_events"),
        "type": if login.ends_with("[bot]") { "Bot" } else { "User" },
        "user_view_type": "public",
        "site_admin": false
    });
    if full {
        for (key, value) in [
            ("name", json!("showdown CI")),
            ("company", Value::Null),
            ("blog", json!("")),
            ("location", Value::Null),
            ("email", Value::Null),
            ("hireable", Value::Null),
            ("bio", Value::Null),
            ("twitter_username", Value::Null),
            ("public_repos", json!(0)),
            ("public_gists", json!(0)),
            ("followers", json!(0)),
            ("following", json!(0)),
            ("created_at", json!("2026-01-01T00:00:00Z")),
            ("updated_at", json!("2026-01-01T00:00:00Z")),
        ] {
            json[key] = value;
        }
    }
    json
}

async fn current_user(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let mut state = state.lock().unwrap();
    if let Some(refused) = check_token(&mut state, "GET", "/user".into(), &headers, None) {
        return refused;
    }
    if state.installation {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({
                "message": "Resource not accessible by integration",
                "documentation_url": "https://docs.github.com/rest/users/users#get-the-authenticated-user",
                "status": "403"
            })),
        )
            .into_response();
    }
    Json(user_json(TOKEN_USER, true)).into_response()
}

/// GitHub's comment object.
fn comment_json(base: &str, comment: &StoredComment) -> Value {
    let StoredComment { id, author, body } = comment;
    json!({
        "id": id,
        "node_id": format!("IC_{id}"),
        "url": format!("{base}/repos/acme/engine/issues/comments/{id}"),
        "html_url": format!("https://github.com/acme/engine/pull/7#issuecomment-{id}"),
        "issue_url": format!("{base}/repos/acme/engine/issues/7"),
        "body": body,
        "user": user_json(author, false),
        "author_association": if author == HUMAN { "CONTRIBUTOR" } else { "NONE" },
        "reactions": {"url": format!("{base}/repos/acme/engine/issues/comments/{id}/reactions"),
            "total_count": 0, "+1": 0, "-1": 0, "laugh": 0, "hooray": 0, "confused": 0,
            "heart": 0, "rocket": 0, "eyes": 0},
        "performed_via_github_app": null,
        "created_at": "2026-11-20T10:00:00Z",
        "updated_at": "2026-11-20T10:00:00Z"
    })
}

/// Records the request; answers 401 without the token and the configured
/// failure if any.
fn check(
    state: &mut FakeState,
    method: &'static str,
    path: String,
    headers: &HeaderMap,
    body: Option<Value>,
) -> Option<Response> {
    if let Some(refused) = check_token(state, method, path, headers, body) {
        return Some(refused);
    }
    let Failure {
        status,
        body,
        headers,
    } = state.failure.clone()?;
    let mut response = (StatusCode::from_u16(status).unwrap(), Json(body)).into_response();
    for (name, value) in headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    Some(response)
}

/// Records the request; answers 401 without the token. (The configured
/// failures are the repository's and the PR's: `/user` only checks the token.)
fn check_token(
    state: &mut FakeState,
    method: &'static str,
    path: String,
    headers: &HeaderMap,
    body: Option<Value>,
) -> Option<Response> {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    state.seen.push(Seen {
        method,
        path,
        authorization: authorization.clone(),
        body,
    });
    if authorization.as_deref() != Some(&format!("Bearer {TOKEN}")) {
        return Some(
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"})),
            )
                .into_response(),
        );
    }
    None
}

async fn list_comments(
    State(state): State<Shared>,
    Path((owner, repo, number)): Path<(String, String, u64)>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut state = state.lock().unwrap();
    let page: usize = query.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    let path = format!("/repos/{owner}/{repo}/issues/{number}/comments?page={page}");
    if let Some(refused) = check(&mut state, "GET", path, &headers, None) {
        return refused;
    }
    if (owner.as_str(), repo.as_str(), number) != ("acme", "engine", 7) {
        return (StatusCode::NOT_FOUND, Json(json!({"message": "Not Found"}))).into_response();
    }
    if let Some(raw) = &state.garbled_listing {
        return (
            [("content-type", "application/json; charset=utf-8")],
            raw.clone(),
        )
            .into_response();
    }
    let pages = state.comments.len().div_ceil(PAGE_SIZE).max(1);
    let items: Vec<Value> = state
        .comments
        .iter()
        .skip((page - 1) * PAGE_SIZE)
        .take(PAGE_SIZE)
        .map(|comment| comment_json(&state.base_url, comment))
        .collect();
    let mut response = Json(items).into_response();
    if page < pages {
        let link = format!(
            "<{base}/repos/acme/engine/issues/7/comments?per_page={PAGE_SIZE}&page={next}>; rel=\"next\", \
             <{base}/repos/acme/engine/issues/7/comments?per_page={PAGE_SIZE}&page={pages}>; rel=\"last\"",
            base = state.base_url,
            next = page + 1,
        );
        response.headers_mut().insert("link", link.parse().unwrap());
    }
    response
}

async fn create_comment(
    State(state): State<Shared>,
    Path((owner, repo, number)): Path<(String, String, u64)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut state = state.lock().unwrap();
    let path = format!("/repos/{owner}/{repo}/issues/{number}/comments");
    if let Some(refused) = check(&mut state, "POST", path, &headers, Some(body.clone())) {
        return refused;
    }
    let Some(text) = body["body"].as_str() else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"message": "Validation Failed"})),
        )
            .into_response();
    };
    let comment = StoredComment {
        id: state.next_id,
        author: state.token_login().to_string(),
        body: text.to_string(),
    };
    state.next_id += 1;
    state.comments.push(comment.clone());
    (
        StatusCode::CREATED,
        Json(comment_json(&state.base_url, &comment)),
    )
        .into_response()
}

async fn update_comment(
    State(state): State<Shared>,
    Path((owner, repo, id)): Path<(String, String, u64)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut state = state.lock().unwrap();
    let path = format!("/repos/{owner}/{repo}/issues/comments/{id}");
    if let Some(refused) = check(&mut state, "PATCH", path, &headers, Some(body.clone())) {
        return refused;
    }
    let text = body["body"].as_str().unwrap_or_default().to_string();
    let base = state.base_url.clone();
    let login = state.token_login();
    match state.comments.iter_mut().find(|c| c.id == id) {
        // GitHub lets only a comment's author (or a maintainer) edit it; the
        // bot must never try another's.
        Some(comment) if comment.author != login => (
            StatusCode::FORBIDDEN,
            Json(json!({"message": "editing another user's comment"})),
        )
            .into_response(),
        Some(comment) => {
            comment.body = text;
            Json(comment_json(&base, comment)).into_response()
        }
        None => (StatusCode::NOT_FOUND, Json(json!({"message": "Not Found"}))).into_response(),
    }
}

/// `showdown pr-comment` for PR 7 of acme/engine on the fake, with the token.
fn pr_comment(env: &TestEnv, fake: &FakeGithub, db: &str, extra: &[&str]) -> Run {
    let mut args = vec![
        "pr-comment",
        "--repo",
        "acme/engine",
        "--pr",
        "7",
        "--db",
        db,
        "--github-api",
        &fake.url,
    ];
    args.extend_from_slice(extra);
    let run = env.showdown_with_env(&args, &[("GITHUB_TOKEN", TOKEN)]);
    assert!(
        !run.stdout.contains(TOKEN) && !run.stderr.contains(TOKEN),
        "the token leaked"
    );
    run
}

const OTHERS: [&str; 3] = ["LGTM", "Could you rebase?", "CI is green on my machine"];

#[test]
fn one_comment_is_created_then_updated_in_place() {
    let env = TestEnv::new();
    let db = database(&env);
    let fake = FakeGithub::start(&OTHERS);

    // Run 3 is 30% slower than run 1: a regression, so a comment is created.
    let first = pr_comment(
        &env,
        &fake,
        &db,
        &[
            "--base",
            "1",
            "--head",
            "3",
            "--dashboard-url",
            "https://ci.example/dash/",
        ],
    );
    assert_eq!(first.code, Some(1), "{}{}", first.stdout, first.stderr);
    assert!(first
        .stdout
        .contains("created https://github.com/acme/engine/pull/7#issuecomment-500"));
    let seen = fake.seen();
    // It asked who the token is, and the listing went through both pages
    // before creating.
    assert_eq!(seen[0].path, "/user");
    let gets: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.method == "GET" && s.path.contains("/comments"))
        .collect();
    assert_eq!(gets.len(), 2, "{seen:#?}");
    assert!(gets[1].path.ends_with("page=2"));
    assert!(seen
        .iter()
        .all(|s| s.authorization.as_deref() == Some(&format!("Bearer {TOKEN}"))));
    let posts: Vec<&Seen> = seen.iter().filter(|s| s.method == "POST").collect();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].path, "/repos/acme/engine/issues/7/comments");
    let body = posts[0].body.as_ref().unwrap()["body"].as_str().unwrap();
    assert!(body.starts_with("<!-- showdown:pr-comment -->"));
    assert!(body.contains("run 1 → run 3: REGRESSION"), "{body}");
    assert!(
        body.contains("| suite | base | head | p | |"),
        "quality table: {body}"
    );
    assert!(body.contains("| speed | e2e_ms |"), "latency table: {body}");
    assert!(body.contains("[base run](https://ci.example/dash/runs/1)"));
    assert!(body.contains("[comparison](https://ci.example/dash/compare?base=1&head=3)"));

    // A second push with two flipped cases (not significant: 8/10 against
    // 10/10, no must-pass case): the same comment, rewritten, not a new one.
    let second = pr_comment(&env, &fake, &db, &["--base", "1", "--head", "5"]);
    assert_eq!(second.code, Some(0), "{}{}", second.stdout, second.stderr);
    assert!(second.stdout.contains("updated"), "{}", second.stdout);
    let seen = fake.seen();
    assert_eq!(seen.iter().filter(|s| s.method == "POST").count(), 1);
    let patches: Vec<&Seen> = seen.iter().filter(|s| s.method == "PATCH").collect();
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0].path, "/repos/acme/engine/issues/comments/500");
    let comments = fake.comments();
    assert_eq!(comments.len(), 4, "one comment of showdown's, never two");
    let updated = &comments[3].1;
    assert!(updated.contains("run 1 → run 5"));
    assert!(
        updated.contains("| speed | case-03 | pass → fail |"),
        "{updated}"
    );
    assert!(updated.contains("| speed | case-07 | pass → fail |"));

    assert!(
        updated.contains(": no regression"),
        "the verdict is rewritten too"
    );
}

#[test]
fn a_clean_result_is_posted_only_with_always() {
    let env = TestEnv::new();
    let db = database(&env);
    let fake = FakeGithub::start(&OTHERS);
    let run = pr_comment(&env, &fake, &db, &["--base", "1", "--head", "2"]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("nothing posted"));
    assert_eq!(fake.comments().len(), 3);
    let run = pr_comment(
        &env,
        &fake,
        &db,
        &["--base", "1", "--head", "2", "--always"],
    );
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("created"));
    assert_eq!(fake.comments().len(), 4);
    // --dry-run prints the body and needs no token.
    let dry = env.showdown_embedded(&[
        "pr-comment",
        "--repo",
        "acme/engine",
        "--pr",
        "7",
        "--db",
        &db,
        "--base",
        "1",
        "--head",
        "3",
        "--dry-run",
    ]);
    assert_eq!(dry.code, Some(1));
    assert!(dry.stdout.starts_with("<!-- showdown:pr-comment -->"));
}

#[test]
fn github_errors_are_clear_and_exit_2() {
    let env = TestEnv::new();
    let db = database(&env);
    let fake = FakeGithub::start(&[]);
    let regressed = ["--base", "1", "--head", "3"];

    // A wrong token: the fake answers 401.
    let mut args = vec![
        "pr-comment",
        "--repo",
        "acme/engine",
        "--pr",
        "7",
        "--db",
        &db,
        "--github-api",
        &fake.url,
    ];
    args.extend_from_slice(&regressed);
    let wrong = env
        .showdown_with_env(&args, &[("GITHUB_TOKEN", "ghp_wrong_token_abc")])
        .failure()
        .stderr_has("GitHub rejected the token (401 Bad credentials)");
    assert!(!wrong.stderr.contains("ghp_wrong_token_abc"));
    env.showdown_with_env(&args, &[])
        .failure()
        .stderr_has("GITHUB_TOKEN is not set");

    for (status, message, headers, expected) in [
        (
            403,
            "Resource not accessible by integration",
            vec![],
            "pull-requests: write",
        ),
        (
            403,
            "API rate limit exceeded for installation",
            vec![
                ("x-ratelimit-remaining", "0".to_string()),
                ("x-ratelimit-reset", "1900000000".to_string()),
            ],
            "rate limit is spent",
        ),
        (429, "Too many requests", vec![], "rate limit is spent"),
        (
            404,
            "Not Found",
            vec![],
            "GitHub found no pull request (404)",
        ),
        (
            422,
            "Validation Failed",
            vec![],
            "refused the comment as invalid (422 Validation Failed)",
        ),
        (
            500,
            "Server Error",
            vec![],
            "GitHub answered 500: Server Error",
        ),
    ] {
        fake.fail_with(status, message, headers);
        pr_comment(&env, &fake, &db, &regressed)
            .failure()
            .stderr_has(expected);
    }

    // Nobody listening.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let mut args = vec![
        "pr-comment",
        "--repo",
        "acme/engine",
        "--pr",
        "7",
        "--db",
        &db,
        "--github-api",
        &closed,
    ];
    args.extend_from_slice(&regressed);
    env.showdown_with_env(&args, &[("GITHUB_TOKEN", TOKEN)])
        .failure()
        .stderr_has("could not reach GitHub at");
    // A malformed repository name never reaches GitHub.
    env.showdown_with_env(
        &[
            "pr-comment",
            "--repo",
            "acme",
            "--pr",
            "7",
            "--db",
            &db,
            "--base",
            "1",
            "--head",
            "3",
        ],
        &[("GITHUB_TOKEN", TOKEN)],
    )
    .failure()
    .stderr_has("expected OWNER/NAME");
}

/// A person quoting showdown's comment (marker included) in a reply: that
/// comment is not showdown's, and is never rewritten.
#[test]
fn a_human_comment_quoting_the_marker_is_left_alone() {
    let env = TestEnv::new();
    let db = database(&env);
    let quoted = "> <!-- showdown:pr-comment -->\n> run 1 → run 3: REGRESSION\n\nIs this real?";
    let fake = FakeGithub::start_with(&[(HUMAN, "LGTM"), (HUMAN, quoted)]);
    let run = pr_comment(&env, &fake, &db, &["--base", "1", "--head", "3"]);
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("created"), "{}", run.stdout);
    let seen = fake.seen();
    assert!(seen.iter().all(|s| s.method != "PATCH"), "{seen:#?}");
    let comments = fake.comments();
    assert_eq!(comments.len(), 3);
    assert_eq!(comments[1].1, quoted, "the person's comment is untouched");
    // The next push finds the bot's own comment, not the quote.
    let again = pr_comment(&env, &fake, &db, &["--base", "1", "--head", "3"]);
    assert!(again.stdout.contains("updated"), "{}", again.stdout);
    let patches: Vec<Seen> = fake
        .seen()
        .into_iter()
        .filter(|s| s.method == "PATCH")
        .collect();
    assert_eq!(patches.len(), 1);
    assert_eq!(
        patches[0].path,
        format!("/repos/acme/engine/issues/comments/{}", comments[2].0)
    );
}

/// Actions' GITHUB_TOKEN: `/user` is refused to an installation token, and
/// its comments are github-actions[bot]'s. `--comment-author` names another
/// App's bot.
#[test]
fn an_installation_token_finds_the_actions_bot_comment() {
    let env = TestEnv::new();
    let db = database(&env);
    let fake = FakeGithub::start_with(&[
        (HUMAN, "> <!-- showdown:pr-comment --> quoted"),
        (
            "github-actions[bot]",
            "<!-- showdown:pr-comment -->\nold report",
        ),
    ]);
    fake.state.lock().unwrap().installation = true;
    let run = pr_comment(&env, &fake, &db, &["--base", "1", "--head", "3"]);
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("updated"), "{}", run.stdout);
    let comments = fake.comments();
    assert_eq!(comments[0].1, "> <!-- showdown:pr-comment --> quoted");
    assert!(comments[1].1.contains("run 1 → run 3"));

    // Another App's bot, named: the Actions bot's comment is not its own.
    let run = pr_comment(
        &env,
        &fake,
        &db,
        &[
            "--base",
            "1",
            "--head",
            "3",
            "--comment-author",
            "other-app[bot]",
        ],
    );
    assert!(run.stdout.contains("created"), "{}", run.stdout);
}

/// An answer that is not GitHub's shape says what was wrong with it, not
/// that GitHub could not be reached.
#[test]
fn a_malformed_answer_says_what_was_wrong() {
    let env = TestEnv::new();
    let db = database(&env);
    let fake = FakeGithub::start(&OTHERS);
    for (raw, expected) in [
        (r#"{"not": "a list"}"#, "did not parse"),
        (r#"[{"id": "one"}]"#, "did not parse"),
        ("[{\"id\": 1, ", "did not parse"),
        ("<html>proxy error</html>", "did not parse"),
    ] {
        fake.state.lock().unwrap().garbled_listing = Some(raw.to_string());
        let run = pr_comment(&env, &fake, &db, &["--base", "1", "--head", "3"])
            .failure()
            .stderr_has(expected)
            .stderr_has("GitHub's answer about the pull request at http://");
        assert!(
            !run.stderr.contains("could not reach GitHub"),
            "{}",
            run.stderr
        );
    }
}
