//! The text `logger_query` and `logger_client query` print: a grid table of rows, newest
//! first, then the count, or `No logs found.`. One function, so the two always agree.

use tabulate_rs::{Headers, TabulateOptions};

use crate::store::LogRow;

/// The table's column headers.
pub const HEADERS: [&str; 4] = ["ID", "Event Type", "Details", "Timestamp"];

/// The whole output for `rows` (already in display order), ending with a newline.
pub fn render(rows: &[LogRow]) -> String {
    if rows.is_empty() {
        return "No logs found.\n".to_owned();
    }
    let data: Vec<[String; 4]> = rows
        .iter()
        .map(|row| {
            [
                row.id.to_string(),
                row.event_type.clone(),
                row.details.clone(),
                row.timestamp.clone(),
            ]
        })
        .collect();
    let options = TabulateOptions::new()
        .headers(Headers::Explicit(HEADERS.map(str::to_owned).to_vec()))
        .table_format("grid")
        // The id is a number (right-aligned, as python-tabulate shows it); the text
        // columns are shown verbatim, never reparsed: details "007" or "1e3" stay as sent.
        .disable_numparse_columns([1, 2, 3]);
    let table = match tabulate_rs::tabulate(data, options) {
        Ok(table) => table,
        // Only an unknown format or empty data fail, and neither can happen here; still,
        // a plain listing beats no output.
        Err(_) => rows
            .iter()
            .map(|row| {
                format!(
                    "{} | {} | {} | {}",
                    row.id, row.event_type, row.details, row.timestamp
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
    };
    format!("{table}\nTotal: {} logs\n", rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, event_type: &str, details: &str) -> LogRow {
        LogRow {
            id,
            event_type: event_type.to_owned(),
            details: details.to_owned(),
            timestamp: "2024-05-01 10:00:00.000".to_owned(),
        }
    }

    /// Rows render as a grid with the four headers, then the total.
    #[test]
    fn renders_grid_and_total() {
        let text = render(&[row(10, "LOGIN", "007"), row(9, "X", "a b")]);
        let expected = "\
+------+--------------+-----------+-------------------------+
|   ID | Event Type   | Details   | Timestamp               |
+======+==============+===========+=========================+
|   10 | LOGIN        | 007       | 2024-05-01 10:00:00.000 |
+------+--------------+-----------+-------------------------+
|    9 | X            | a b       | 2024-05-01 10:00:00.000 |
+------+--------------+-----------+-------------------------+
Total: 2 logs
";
        assert_eq!(text, expected);
    }

    /// Nothing to show is one plain line.
    #[test]
    fn renders_nothing_found() {
        assert_eq!(render(&[]), "No logs found.\n");
    }
}
