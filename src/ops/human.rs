//! Short human renderings of durations and instants for operator output
//! ("1h 54m left", "3m ago") and a plain aligned text table. Pure formatting:
//! no I/O, no knowledge of keys.

/// A duration in milliseconds as its one or two most significant units:
/// `2d 3h`, `1h 54m`, `3m`, `42s`, `0s`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m")
    } else {
        format!("{s}s")
    }
}

/// How long ago `at_ms` was, seen at `now_ms`: `3m ago` (`0s ago` for the future).
pub fn ago(at_ms: u64, now_ms: u64) -> String {
    format!("{} ago", duration(now_ms.saturating_sub(at_ms)))
}

/// Rows of cells as columns padded to the widest cell; the last column is
/// not padded. Every row ends with a newline.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 < row.len() {
                line.push_str(cell);
                let pad = widths[c] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(42_999), "42s");
        assert_eq!(duration(3 * 60_000 + 5_000), "3m");
        assert_eq!(duration((60 + 54) * 60_000 + 30_000), "1h 54m");
        assert_eq!(duration(27 * 3_600_000), "1d 3h");
        assert_eq!(ago(1_000, 181_000), "3m ago");
        assert_eq!(ago(5_000, 1_000), "0s ago");
    }

    #[test]
    fn tables_align() {
        let t = table(&[
            vec!["A".into(), "BB".into(), "C".into()],
            vec!["long".into(), "".into(), "x".into()],
        ]);
        assert_eq!(t, "A     BB  C\nlong      x\n");
    }
}
