//! Plain-text tables for `weir admin`: columns as wide as their widest cell, numbers right.

/// Renders `rows` under `headers`; a column whose cells are all numbers is aligned right.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    let mut numeric = vec![!rows.is_empty(); headers.len()];
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(headers.len()) {
            widths[i] = widths[i].max(cell.chars().count());
            numeric[i] &= cell.parse::<f64>().is_ok();
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.into_iter().enumerate().take(headers.len()) {
            if i > 0 {
                out.push_str("  ");
            }
            let pad = " ".repeat(widths[i].saturating_sub(cell.chars().count()));
            if numeric[i] {
                out.push_str(&pad);
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&pad);
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_numbers_align_right() {
        let text = render(
            &["ID", "ROWS", "STATE"],
            &[
                vec!["executor-0".into(), "5".into(), "ACTIVE".into()],
                vec!["e1".into(), "12000".into(), "LOST".into()],
            ],
        );
        assert_eq!(
            text,
            "ID           ROWS  STATE\nexecutor-0      5  ACTIVE\ne1          12000  LOST"
        );
    }
}
