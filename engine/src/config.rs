//! Parsing of the symbol directory option (`--symbols`): a count of
//! synthetic symbols, a comma-separated list of names, or a file of names.

use std::path::Path;

/// The most symbols a server takes (a bound on directory size and book memory).
pub const SYMBOLS_MAX: usize = 1_000_000;
/// The longest symbol name (the SymbolEntry name field).
pub const SYMBOL_NAME_BYTES_MAX: usize = 20;

/// The name of synthetic symbol `i` of `count`: `SYM0007`.
pub fn synthetic_name(i: usize, count: usize) -> String {
    let width = count.saturating_sub(1).max(1).to_string().len().max(4);
    format!("SYM{i:0width$}")
}

/// Parses `--symbols`: `64` (64 synthetic symbols), `BTC-USD,ETH-USD`, or
/// the path of a file with one name per line (blank lines and `#` comments
/// ignored; `@path` forces the file reading).
pub fn parse_symbols(arg: &str) -> Result<Vec<String>, String> {
    let arg = arg.trim();
    if arg.is_empty() {
        return Err(
            "--symbols is empty; give a count (64), names (BTC-USD,ETH-USD) or a file".into(),
        );
    }
    if let Ok(count) = arg.parse::<usize>() {
        if count == 0 || count > SYMBOLS_MAX {
            return Err(format!(
                "--symbols {count}: the count must be between 1 and {SYMBOLS_MAX}"
            ));
        }
        return Ok((0..count).map(|i| synthetic_name(i, count)).collect());
    }
    let (path, forced) = match arg.strip_prefix('@') {
        Some(p) => (p, true),
        None => (arg, false),
    };
    if forced || Path::new(path).is_file() {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--symbols: cannot read {path}: {e}"))?;
        let names: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        return check_names(&names, &format!("in {path}"));
    }
    let names: Vec<&str> = arg.split(',').map(str::trim).collect();
    check_names(&names, "in --symbols")
}

fn check_names(names: &[&str], origin: &str) -> Result<Vec<String>, String> {
    if names.is_empty() {
        return Err(format!("no symbol names {origin}"));
    }
    if names.len() > SYMBOLS_MAX {
        return Err(format!(
            "{} symbols {origin}; at most {SYMBOLS_MAX}",
            names.len()
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(names.len());
    for (i, n) in names.iter().enumerate() {
        if n.is_empty() {
            return Err(format!("symbol {} {origin} is empty", i + 1));
        }
        if n.len() > SYMBOL_NAME_BYTES_MAX {
            return Err(format!(
                "symbol '{n}' {origin} is {} bytes; names are at most {SYMBOL_NAME_BYTES_MAX}",
                n.len()
            ));
        }
        if n.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!(
                "symbol '{n}' {origin} contains whitespace or control characters"
            ));
        }
        if !seen.insert(*n) {
            return Err(format!("symbol '{n}' appears twice {origin}"));
        }
    }
    Ok(names.iter().map(|s| s.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_lists_and_files() {
        let s = parse_symbols("3").unwrap();
        assert_eq!(s, vec!["SYM0000", "SYM0001", "SYM0002"]);
        assert_eq!(parse_symbols("12000").unwrap()[11_999], "SYM11999");
        assert_eq!(
            parse_symbols("BTC-USD, ETH-USD").unwrap(),
            vec!["BTC-USD", "ETH-USD"]
        );
        let path = std::env::temp_dir().join(format!("turbo-dex-symbols-{}", std::process::id()));
        std::fs::write(&path, "# majors\nBTC-USD\n\nETH-USD\n").unwrap();
        assert_eq!(
            parse_symbols(path.to_str().unwrap()).unwrap(),
            vec!["BTC-USD", "ETH-USD"]
        );
        assert_eq!(
            parse_symbols(&format!("@{}", path.display())).unwrap(),
            vec!["BTC-USD", "ETH-USD"]
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn bad_symbol_options_say_what_is_wrong() {
        assert!(parse_symbols("0").unwrap_err().contains("between 1"));
        assert!(parse_symbols("A,A").unwrap_err().contains("twice"));
        assert!(parse_symbols("A,,B").unwrap_err().contains("empty"));
        assert!(
            parse_symbols("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
                .unwrap_err()
                .contains("at most 20")
        );
        assert!(
            parse_symbols("@/nonexistent/x")
                .unwrap_err()
                .contains("cannot read")
        );
    }
}
