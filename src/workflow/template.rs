//! `${{ … }}` expressions inside workflow strings.

/// One reference written inside `${{ … }}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `params.NAME`
    Param(String),
    /// `matrix.NAME`, a value of the step's own `foreach` expansion
    Matrix(String),
    /// `out`, the step's own output directory
    Out,
    /// `steps.STEP.OUTPUT` (`OUTPUT` is `out`, `metrics`, or a named output)
    Step { step: String, output: String },
}

/// A piece of a parsed string: literal text or an expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Expr(Expr),
}

/// Split `s` into text and expressions. `$${{` stands for a literal `${{`.
pub fn parse(s: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find("${{") {
        if rest[..pos].ends_with('$') {
            text.push_str(&rest[..pos - 1]);
            text.push_str("${{");
            rest = &rest[pos + 3..];
            continue;
        }
        text.push_str(&rest[..pos]);
        let after = &rest[pos + 3..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("`${{{{` without a closing `}}}}` in {s:?}"))?;
        let expr = parse_expr(after[..end].trim())?;
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut text)));
        }
        pieces.push(Piece::Expr(expr));
        rest = &after[end + 2..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

fn parse_expr(e: &str) -> Result<Expr, String> {
    let bad = || {
        format!(
            "cannot read `${{{{ {e} }}}}`: expected `params.NAME`, `matrix.NAME`, `out`, or `steps.STEP.OUTPUT`"
        )
    };
    if e == "out" {
        return Ok(Expr::Out);
    }
    if let Some(name) = e.strip_prefix("params.") {
        return ident(name).map(Expr::Param).ok_or_else(bad);
    }
    if let Some(name) = e.strip_prefix("matrix.") {
        return ident(name).map(Expr::Matrix).ok_or_else(bad);
    }
    if let Some(rest) = e.strip_prefix("steps.") {
        // The step name may carry an instance selector with dots inside: `train[lr=0.1]`.
        let split = match rest.find('[') {
            Some(open) => {
                let close = rest[open..].find(']').ok_or_else(bad)? + open;
                rest[close..].find('.').map(|d| d + close)
            }
            None => rest.find('.'),
        };
        let dot = split.ok_or_else(bad)?;
        let (step, output) = (&rest[..dot], &rest[dot + 1..]);
        if step.is_empty() || ident(output).is_none() {
            return Err(bad());
        }
        return Ok(Expr::Step {
            step: step.to_string(),
            output: output.to_string(),
        });
    }
    Err(bad())
}

fn ident(s: &str) -> Option<String> {
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    ok.then(|| s.to_string())
}

/// Quote a string for `sh` when it holds anything but safe characters.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_text_and_expressions() {
        let p = parse("python a.py ${{ steps.tok.out }}/x -n ${{params.n}}").unwrap();
        assert_eq!(
            p,
            vec![
                Piece::Text("python a.py ".into()),
                Piece::Expr(Expr::Step {
                    step: "tok".into(),
                    output: "out".into()
                }),
                Piece::Text("/x -n ".into()),
                Piece::Expr(Expr::Param("n".into())),
            ]
        );
    }

    #[test]
    fn instance_selector_may_contain_dots() {
        let p = parse("${{ steps.train[lr=0.1].model }}").unwrap();
        assert_eq!(
            p,
            vec![Piece::Expr(Expr::Step {
                step: "train[lr=0.1]".into(),
                output: "model".into()
            })]
        );
    }

    #[test]
    fn escaped_and_unclosed() {
        assert_eq!(
            parse("echo $${{ x }}").unwrap(),
            vec![Piece::Text("echo ${{ x }}".into())]
        );
        assert!(parse("echo ${{ out").unwrap_err().contains("closing"));
        assert!(parse("${{ parms.x }}").unwrap_err().contains("expected"));
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/tmp/a-b_c.txt"), "/tmp/a-b_c.txt");
        assert_eq!(shell_quote("a b'c"), r"'a b'\''c'");
    }
}
