//! The PR bot: one comment per pull request, found by a hidden marker and
//! updated in place, posted through octocrab. GitHub's refusals become plain
//! messages ([`GithubError`]); the token never appears in them.
//!
//! Only a comment the token's own account wrote counts as showdown's: a
//! person quoting the marker in a reply is never overwritten. The account is
//! `GET /user`'s; an installation token (Actions' `GITHUB_TOKEN`) may not read
//! `/user`, and comments as `github-actions[bot]`.

use anyhow::{Context, Result};
use minijinja::{context, Environment};
use octocrab::models::CommentId;
use octocrab::Octocrab;
use serde::Serialize;

use crate::report::{render_markdown, Comparison};

/// The hidden line that marks showdown's comment on a PR.
pub const COMMENT_MARKER: &str = "<!-- showdown:pr-comment -->";

/// Who Actions' `GITHUB_TOKEN` comments as: the account when `/user` is
/// refused to an installation token.
pub const ACTIONS_BOT_LOGIN: &str = "github-actions[bot]";

/// Where to comment.
#[derive(Debug, Clone)]
pub struct PullRequest {
    /// Repository owner.
    pub owner: String,
    /// Repository name.
    pub repo: String,
    /// Pull request number.
    pub number: u64,
}

impl PullRequest {
    /// `OWNER/NAME` and a number.
    pub fn parse(repo: &str, number: u64) -> Result<Self, GithubError> {
        match repo.split_once('/') {
            Some((owner, name)) if !owner.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self {
                    owner: owner.to_string(),
                    repo: name.to_string(),
                    number,
                })
            }
            _ => Err(GithubError::Usage(format!(
                "--repo `{repo}`: expected OWNER/NAME"
            ))),
        }
    }
}

/// What happened to the comment.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum CommentOutcome {
    /// A new comment.
    Created {
        /// Its id.
        id: u64,
        /// Its page.
        url: String,
    },
    /// The existing comment, rewritten.
    Updated {
        /// Its id.
        id: u64,
        /// Its page.
        url: String,
    },
    /// Nothing to say (no regression, no earlier comment, no `--always`).
    Skipped,
}

/// Why GitHub refused, in words a CI log reader can act on.
#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// 401.
    #[error("GitHub rejected the token (401 {0}); check GITHUB_TOKEN")]
    Unauthorized(String),
    /// 403 or 429 with the rate limit spent.
    #[error("GitHub's rate limit is spent ({status} {message}){reset}; try again later")]
    RateLimited {
        /// The status.
        status: u16,
        /// GitHub's message.
        message: String,
        /// When it resets, if GitHub said.
        reset: String,
    },
    /// 403 otherwise.
    #[error("GitHub refused (403 {0}); the token needs write access to pull requests (permissions: pull-requests: write)")]
    Forbidden(String),
    /// 404.
    #[error("GitHub found no {0} (404); check --repo and --pr, and that the token can see the repository")]
    NotFound(String),
    /// 422.
    #[error("GitHub refused the comment as invalid (422 {0})")]
    Invalid(String),
    /// Any other status.
    #[error("GitHub answered {status}: {message}")]
    Status {
        /// The status.
        status: u16,
        /// GitHub's message.
        message: String,
    },
    /// An answer that is not what GitHub's API returns.
    #[error("GitHub's answer about the {what} at {api} did not parse: {reason}")]
    Malformed {
        /// What was asked about.
        what: String,
        /// The API base.
        api: String,
        /// Where and how it failed to parse.
        reason: String,
    },
    /// No answer at all.
    #[error("could not reach GitHub at {api}: {reason}")]
    Network {
        /// The API base.
        api: String,
        /// What failed.
        reason: String,
    },
}

/// A GitHub REST client for one PR's comments.
pub struct PrCommenter {
    client: Octocrab,
    api: String,
    /// The login whose comments are showdown's, when given rather than asked.
    author: Option<String>,
}

impl PrCommenter {
    /// A client for `api` (`https://api.github.com`, or an Enterprise or test
    /// server's base URL) authenticated with `token`.
    pub fn new(api: &str, token: &str) -> Result<Self, GithubError> {
        let client = Octocrab::builder()
            .base_uri(api)
            .map_err(|e| GithubError::Usage(format!("--github-api `{api}`: {e}")))?
            .personal_token(token.to_string())
            .build()
            .map_err(|e| GithubError::Usage(format!("building the GitHub client: {e}")))?;
        Ok(Self {
            client,
            api: api.to_string(),
            author: None,
        })
    }

    /// Counts only comments by `login` as showdown's, without asking GitHub
    /// (a GitHub App's `NAME[bot]`).
    pub fn with_author(mut self, login: Option<String>) -> Self {
        self.author = login;
        self
    }

    /// The login the token comments as.
    pub async fn author(&self) -> Result<String, GithubError> {
        if let Some(login) = &self.author {
            return Ok(login.clone());
        }
        match self.client.current().user().await {
            Ok(user) => Ok(user.login),
            // An installation token may not read /user: Actions' GITHUB_TOKEN.
            Err(octocrab::Error::GitHub { source, .. }) if source.status_code.as_u16() == 403 => {
                Ok(ACTIONS_BOT_LOGIN.to_string())
            }
            Err(e) => Err(self.explain(e, "token's user")),
        }
    }

    /// The id of showdown's comment on the PR, looking through every page:
    /// one by the token's own account that carries the marker.
    pub async fn find_comment(&self, pr: &PullRequest) -> Result<Option<u64>, GithubError> {
        let author = self.author().await?;
        let issues = self.client.issues(&pr.owner, &pr.repo);
        let mut page = issues
            .list_comments(pr.number)
            .per_page(100)
            .send()
            .await
            .map_err(|e| self.explain(e, "pull request"))?;
        loop {
            if let Some(comment) = page.items.iter().find(|c| {
                c.user.login == author
                    && c.body
                        .as_deref()
                        .is_some_and(|b| b.contains(COMMENT_MARKER))
            }) {
                return Ok(Some(comment.id.into_inner()));
            }
            match self
                .client
                .get_page(&page.next)
                .await
                .map_err(|e| self.explain(e, "pull request"))?
            {
                Some(next) => page = next,
                None => return Ok(None),
            }
        }
    }

    /// Creates the comment, or rewrites the one already there. With `create`
    /// false an absent comment is not created ([`CommentOutcome::Skipped`]).
    pub async fn upsert(
        &self,
        pr: &PullRequest,
        body: &str,
        create: bool,
    ) -> Result<CommentOutcome, GithubError> {
        let issues = self.client.issues(&pr.owner, &pr.repo);
        match self.find_comment(pr).await? {
            Some(id) => {
                // PATCH, as GitHub documents it (octocrab's update_comment
                // sends POST, which github.com tolerates but not every proxy).
                let route = format!(
                    "/repos/{}/{}/issues/comments/{}",
                    pr.owner,
                    pr.repo,
                    CommentId(id)
                );
                let comment: octocrab::models::issues::Comment = self
                    .client
                    .patch(route, Some(&serde_json::json!({ "body": body })))
                    .await
                    .map_err(|e| self.explain(e, "comment"))?;
                Ok(CommentOutcome::Updated {
                    id,
                    url: comment.html_url.to_string(),
                })
            }
            None if create => {
                let comment = issues
                    .create_comment(pr.number, body)
                    .await
                    .map_err(|e| self.explain(e, "pull request"))?;
                Ok(CommentOutcome::Created {
                    id: comment.id.into_inner(),
                    url: comment.html_url.to_string(),
                })
            }
            None => Ok(CommentOutcome::Skipped),
        }
    }

    fn explain(&self, err: octocrab::Error, what: &str) -> GithubError {
        match err {
            octocrab::Error::GitHub { source, .. } => {
                let status = source.status_code.as_u16();
                let message = source.message.clone();
                let remaining = source
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("x-ratelimit-remaining"))
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let rate_limited = status == 429
                    || (status == 403
                        && (remaining.as_deref() == Some("0")
                            || message.to_lowercase().contains("rate limit")));
                match status {
                    _ if rate_limited => GithubError::RateLimited {
                        status,
                        message,
                        reset: source
                            .rate_limit_reset_at()
                            .map(|t| format!(", resets at {}", t.to_rfc3339()))
                            .unwrap_or_default(),
                    },
                    401 => GithubError::Unauthorized(message),
                    403 => GithubError::Forbidden(message),
                    404 => GithubError::NotFound(what.to_string()),
                    422 => GithubError::Invalid(message),
                    _ => GithubError::Status { status, message },
                }
            }
            octocrab::Error::Json { source, .. } => GithubError::Malformed {
                what: what.to_string(),
                api: self.api.clone(),
                reason: format!("at `{}`: {}", source.path(), source.inner()),
            },
            octocrab::Error::Serde { source, .. } => GithubError::Malformed {
                what: what.to_string(),
                api: self.api.clone(),
                reason: source.to_string(),
            },
            // Octocrab's pagination reports an answer that is neither a list
            // nor a search result as `Other`, as it does a body cut off in
            // transit: only the former is a malformed answer.
            other @ octocrab::Error::Other { .. } if is_decoding(&other) => {
                GithubError::Malformed {
                    what: what.to_string(),
                    api: self.api.clone(),
                    reason: network_reason(&other),
                }
            }
            other => GithubError::Network {
                api: self.api.clone(),
                reason: network_reason(&other),
            },
        }
    }
}

/// Whether an error arose decoding an answer that arrived, not in transit.
fn is_decoding(err: &octocrab::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(err);
    while let Some(e) = source {
        if e.is::<serde_json::Error>() || e.to_string().starts_with("error decoding") {
            return true;
        }
        source = e.source();
    }
    false
}

/// The innermost cause of a transport failure (octocrab's own display adds a
/// backtrace location).
fn network_reason(err: &octocrab::Error) -> String {
    let mut source: &dyn std::error::Error = err;
    while let Some(next) = source.source() {
        source = next;
    }
    source.to_string()
}

/// Links to the dashboard's pages for the two runs and their comparison.
#[derive(Debug, Clone, Serialize)]
pub struct DashboardLinks {
    /// The base run's page.
    pub base: String,
    /// The head run's page.
    pub head: String,
    /// The comparison page.
    pub compare: String,
}

impl DashboardLinks {
    /// Links under the dashboard's base URL.
    pub fn new(dashboard_url: &str, base: i64, head: i64) -> Self {
        let root = dashboard_url.trim_end_matches('/');
        Self {
            base: format!("{root}/runs/{base}"),
            head: format!("{root}/runs/{head}"),
            compare: format!("{root}/compare?base={base}&head={head}"),
        }
    }
}

/// The comment's body: the marker, the comparison's report and links.
pub fn render_pr_comment(
    comparison: &Comparison,
    links: Option<&DashboardLinks>,
    head_commit: Option<&str>,
) -> Result<String> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    let source = crate::assets::template("pr-comment.md.j2")?;
    env.add_template("pr-comment.md", &source)
        .context("template pr-comment.md.j2")?;
    let text = env.get_template("pr-comment.md")?.render(context! {
        marker => COMMENT_MARKER,
        report => render_markdown(comparison)?,
        links => links,
        head_commit => head_commit,
    })?;
    Ok(text)
}
