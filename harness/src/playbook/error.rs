//! The one error a playbook can produce: where it is, and what was expected.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A user error in a playbook. Loading stops at the first one, before any trial runs.
#[derive(Debug, Clone)]
pub struct PlaybookError {
    pub file: PathBuf,
    /// 1-based line and column, where the YAML parser knows them.
    pub location: Option<(usize, usize)>,
    /// Where in the document, as `scenarios[2].oracles[0]`.
    pub yaml_path: Option<String>,
    pub message: String,
    /// The typed error `message` was made from (a [`super::resolve::ResolveError`], an
    /// [`crate::oracle::OracleError`], …), where there is one.
    pub cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// Two errors are equal when they say the same thing at the same place; the cause's type
/// is not compared.
impl PartialEq for PlaybookError {
    fn eq(&self, other: &Self) -> bool {
        (&self.file, self.location, &self.yaml_path, &self.message)
            == (&other.file, other.location, &other.yaml_path, &other.message)
    }
}

impl PlaybookError {
    pub fn new(file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            location: None,
            yaml_path: None,
            message: message.into(),
            cause: None,
        }
    }

    /// An error whose message is what `cause` says, keeping it as the source.
    pub fn from_error(file: &Path, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::new(file, cause.to_string()).with_source(cause)
    }

    /// Keeps `cause` as the source of this error (its message is unchanged).
    pub fn with_source(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.cause = Some(Arc::new(cause));
        self
    }

    pub fn at(mut self, yaml_path: impl Into<String>) -> Self {
        self.yaml_path = Some(yaml_path.into());
        self
    }

    /// From a YAML or schema error, keeping its location and path.
    pub(crate) fn from_yaml(file: &Path, err: serde_path_to_error::Error<serde_yaml_ng::Error>) -> Self {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let location = inner.location().map(|l| (l.line(), l.column()));
        let message = bare_message(&inner, &path);
        Self {
            file: file.to_path_buf(),
            location,
            yaml_path: (path != "." && !path.is_empty()).then_some(path),
            message,
            cause: Some(Arc::new(inner)),
        }
    }

    /// The path relative to `base` when it lies under it, for shorter messages in snapshots.
    pub fn relative_to(mut self, base: &Path) -> Self {
        if let Ok(rel) = self.file.strip_prefix(base) {
            self.file = rel.to_path_buf();
        }
        self
    }
}

/// serde_yaml_ng's message without the path prefix and the " at line L column C" suffix it
/// adds, since this type reports both as fields.
fn bare_message(err: &serde_yaml_ng::Error, path: &str) -> String {
    let mut text = err.to_string();
    if let Some(loc) = err.location() {
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(stripped) = text.strip_suffix(&suffix) {
            text = stripped.to_string();
        }
    }
    // serde_yaml_ng prefixes the path it knows, which may be a part of the full one.
    if let Some((head, rest)) = text.split_once(": ")
        && !head.is_empty()
        && !head.contains(' ')
        && path.contains(head)
    {
        text = rest.to_string();
    }
    text
}

impl fmt::Display for PlaybookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.location {
            write!(f, ":{line}:{column}")?;
        }
        if let Some(path) = &self.yaml_path {
            write!(f, ": at `{path}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for PlaybookError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_deref().map(|c| c as &(dyn std::error::Error + 'static))
    }
}
