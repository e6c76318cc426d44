//! Where the results live: a SQLite file (the embedded default, nothing to
//! start) or a PostgreSQL server a team shares, named by one `--db` value.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A results database, as `--db` or `SHOWDOWN_DB` name it: a path (or
/// `sqlite:PATH`) for a SQLite file, `postgres://…` for a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbLocation {
    /// A SQLite file, created when missing.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL (`postgres://` or `postgresql://`).
    Postgres(String),
}

impl DbLocation {
    /// The SQLite file, when this is one.
    pub fn sqlite_path(&self) -> Option<&std::path::Path> {
        match self {
            Self::Sqlite(path) => Some(path),
            Self::Postgres(_) => None,
        }
    }

    /// Whether there is something to read: a SQLite file that exists, or any
    /// server (a server's emptiness is learnt by connecting).
    pub fn may_hold_results(&self) -> bool {
        match self {
            Self::Sqlite(path) => path.is_file(),
            Self::Postgres(_) => true,
        }
    }

    /// The value to hand another showdown process's `--db`, password included.
    pub fn as_arg(&self) -> String {
        match self {
            Self::Sqlite(path) => path.display().to_string(),
            Self::Postgres(url) => url.clone(),
        }
    }
}

impl FromStr for DbLocation {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value.is_empty() {
            return Err("an empty database location".into());
        }
        if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            let url = url::Url::parse(value)
                .map_err(|e| format!("`{}` is not a PostgreSQL URL: {e}", redact(value)))?;
            if url.host_str().is_none_or(str::is_empty)
                && !url.query().unwrap_or("").contains("host=")
            {
                return Err(format!(
                    "`{}` names no host (postgres://USER@HOST[:PORT]/DB, or ?host=/socket/dir)",
                    redact(value)
                ));
            }
            return Ok(Self::Postgres(value.to_string()));
        }
        if let Some(rest) = value.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err("`sqlite:` names no file".into());
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = value.split_once("://") {
            return Err(format!(
                "unsupported database `{scheme}://`: showdown stores results in SQLite (a path) \
                 or PostgreSQL (postgres://…)"
            ));
        }
        Ok(Self::Sqlite(PathBuf::from(value)))
    }
}

/// Shown in messages and logs: a server's password never is.
impl fmt::Display for DbLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "{}", path.display()),
            Self::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

/// `url` with its password replaced by `***`.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_string(),
        Err(_) => "<an unparsable URL>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_urls_name_their_store() {
        assert_eq!(
            "runs/showdown.db".parse::<DbLocation>().unwrap(),
            DbLocation::Sqlite("runs/showdown.db".into())
        );
        assert_eq!(
            "sqlite:a.db".parse::<DbLocation>().unwrap(),
            DbLocation::Sqlite("a.db".into())
        );
        assert_eq!(
            "sqlite:///tmp/a.db".parse::<DbLocation>().unwrap(),
            DbLocation::Sqlite("/tmp/a.db".into())
        );
        let pg: DbLocation = "postgres://ci:s3cret@db.internal:5433/showdown"
            .parse()
            .unwrap();
        assert_eq!(
            pg,
            DbLocation::Postgres("postgres://ci:s3cret@db.internal:5433/showdown".into())
        );
        assert_eq!(
            pg.to_string(),
            "postgres://ci:***@db.internal:5433/showdown"
        );
        assert!(pg.as_arg().contains("s3cret"));
        assert!("postgresql://u@h/d".parse::<DbLocation>().is_ok());
        assert!("postgres:///d?host=/run/pg".parse::<DbLocation>().is_ok());
    }

    #[test]
    fn what_is_neither_is_refused_clearly() {
        let err = "mysql://u@h/d".parse::<DbLocation>().unwrap_err();
        assert!(err.contains("unsupported database `mysql://`"), "{err}");
        assert!("".parse::<DbLocation>().is_err());
        assert!("sqlite:".parse::<DbLocation>().is_err());
        let err = "postgres:///d".parse::<DbLocation>().unwrap_err();
        assert!(err.contains("names no host"), "{err}");
    }
}
