//! Located errors: a message tied to a place in a workflow file, rendered by miette.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::{NamedSource, SourceSpan};

/// A place in a YAML source: byte offset and length plus 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub offset: usize,
    pub len: usize,
    pub line: u32,
    pub column: u32,
}

impl Span {
    /// True when the parser could not say where the value came from.
    pub fn is_unknown(&self) -> bool {
        self.line == 0
    }

    pub(crate) fn from_location(loc: &serde_saphyr::Location) -> Span {
        let span = loc.span();
        let (offset, len) = match (span.byte_offset(), span.byte_len()) {
            (Some(o), Some(l)) => (o as usize, l as usize),
            _ => (0, 0),
        };
        Span {
            offset,
            len,
            line: loc.line() as u32,
            column: loc.column() as u32,
        }
    }
}

/// The text of a workflow file, shared by every diagnostic that points into it.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: Arc<str>,
}

impl Source {
    pub fn new(path: &Path, text: String) -> Source {
        Source {
            path: path.to_path_buf(),
            text: text.into(),
        }
    }

    /// Byte offset of a 1-based line and (character) column.
    pub fn offset_of(&self, line: u32, column: u32) -> usize {
        let mut offset = 0;
        for (i, l) in self.text.split_inclusive('\n').enumerate() {
            if i + 1 == line as usize {
                let col: usize = l
                    .chars()
                    .take(column.saturating_sub(1) as usize)
                    .map(char::len_utf8)
                    .sum();
                return offset + col;
            }
            offset += l.len();
        }
        self.text.len()
    }
}

/// An error in a workflow file that a user can act on: where, what, and what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub span: Span,
    pub message: String,
    pub help: Option<String>,
    text: Option<Arc<str>>,
}

impl Diagnostic {
    /// A diagnostic at `span` of `source`.
    pub fn at(source: &Source, mut span: Span, message: impl Into<String>) -> Diagnostic {
        if span.len == 0 && span.line > 0 {
            span.offset = source.offset_of(span.line, span.column);
        }
        Diagnostic {
            file: source.path.clone(),
            span,
            message: message.into(),
            help: None,
            text: Some(source.text.clone()),
        }
    }

    /// A diagnostic about a whole file (no useful position).
    pub fn file(path: &Path, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: path.to_path_buf(),
            span: Span::default(),
            message: message.into(),
            help: None,
            text: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    /// `file:line:column`, the form editors and terminals turn into links.
    pub fn location(&self) -> String {
        if self.span.is_unknown() {
            self.file.display().to_string()
        } else {
            format!(
                "{}:{}:{}",
                self.file.display(),
                self.span.line,
                self.span.column
            )
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location(), self.message)
    }
}

impl miette::Diagnostic for Diagnostic {
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        if self.span.is_unknown() || self.text.is_none() {
            return None;
        }
        let span = SourceSpan::new(self.span.offset.into(), self.span.len.max(1));
        Some(Box::new(std::iter::once(
            miette::LabeledSpan::new_with_span(Some("here".into()), span),
        )))
    }
}

/// Several diagnostics at once, so a user fixes them all in one pass.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Render a diagnostic with its snippet for a terminal (or plain text when not a TTY).
pub fn render(d: &Diagnostic) -> String {
    let named = d.text.as_ref().map(|t| {
        NamedSource::new(d.file.display().to_string(), t.to_string()).with_language("yaml")
    });
    let mut out = String::new();
    let handler = miette::GraphicalReportHandler::new_themed(if colors_enabled() {
        miette::GraphicalTheme::unicode()
    } else {
        miette::GraphicalTheme::unicode_nocolor()
    });
    let report: miette::Report = match named {
        Some(src) if !d.span.is_unknown() => miette::Report::new(d.clone()).with_source_code(src),
        _ => miette::Report::new(d.clone()),
    };
    if handler.render_report(&mut out, report.as_ref()).is_err() {
        out = d.to_string();
    }
    out
}

fn colors_enabled() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal()
}

/// Closest candidate to `name`, for "did you mean" hints.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}
