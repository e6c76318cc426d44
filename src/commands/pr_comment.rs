//! `showdown pr-comment`: compare two runs and keep showdown's one comment on
//! a pull request up to date. A regression is always posted; a clean result
//! only updates an earlier comment (so it does not go stale), or is posted
//! with `--always`. Exit 1 on a regression, like `compare`.

use anyhow::{Context, Result};
use showdown::{render_pr_comment, CommentOutcome, DashboardLinks, PrCommenter, PullRequest};

use crate::cli::PrCommentArgs;
use crate::commands::compare::{compare_runs, verdict};

/// Runs `showdown pr-comment`.
pub fn run(args: PrCommentArgs) -> Result<()> {
    let number = match args.pr {
        Some(n) => n,
        None => showdown::GitMeta::default()
            .with_github_env()
            .pr_number
            .context("--pr is required outside a pull_request workflow (GITHUB_REF names no PR)")?,
    };
    let pr = PullRequest::parse(&args.repo, number)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let comparison = runtime.block_on(compare_runs(&args.compare, &args.base, &args.head))?;
    let links = args
        .dashboard_url
        .as_deref()
        .map(|url| DashboardLinks::new(url, comparison.base.id, comparison.head.id));
    let body = render_pr_comment(
        &comparison,
        links.as_ref(),
        comparison.head.git_commit.as_deref(),
    )?;
    if args.dry_run {
        print!("{body}");
    } else {
        let token = std::env::var("GITHUB_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .context("GITHUB_TOKEN is not set (or use --dry-run)")?;
        let create = comparison.regressed() || args.always;
        // octocrab's client spawns its worker on the runtime it is built in.
        let outcome = runtime.block_on(async {
            let commenter = PrCommenter::new(&args.github_api, &token)?
                .with_author(args.comment_author.clone());
            commenter.upsert(&pr, &body, create).await
        })?;
        match &outcome {
            CommentOutcome::Created { url, .. } => println!("created {url}"),
            CommentOutcome::Updated { url, .. } => println!("updated {url}"),
            CommentOutcome::Skipped => println!(
                "no regression and no earlier comment on {}/{}#{}: nothing posted (--always posts anyway)",
                pr.owner, pr.repo, pr.number
            ),
        }
    }
    verdict(&comparison)
}
