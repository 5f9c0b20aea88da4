//! Prints a report: a table with the columns a command names (kubectl's style: upper-case
//! headers, aligned), or the whole value as JSON or YAML.
use serde_json::Value;

/// The output format (`-o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// `value` in `format`; a table shows `columns` of each row (an array's items, or the one
/// object).
pub fn render(value: &Value, format: Format, columns: &[&str]) -> anyhow::Result<String> {
    Ok(match format {
        Format::Json => serde_json::to_string_pretty(value)? + "\n",
        Format::Yaml => serde_yaml::to_string(value)?,
        Format::Table => match value {
            Value::Array(rows) => table(rows, columns),
            // One object: one row.
            other => table(std::slice::from_ref(other), columns),
        },
    })
}

/// Rows under upper-case headers, columns padded to their widest cell.
pub fn table(rows: &[Value], columns: &[&str]) -> String {
    let cell = |row: &Value, column: &str| match &row[column] {
        Value::Null => "-".to_owned(),
        Value::String(text) => text.clone(),
        Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().map_or_else(|| item.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    let mut grid: Vec<Vec<String>> = vec![columns.iter().map(|column| column.to_uppercase()).collect()];
    grid.extend(rows.iter().map(|row| columns.iter().map(|column| cell(row, column)).collect()));
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| grid.iter().map(|line| line[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for line in grid {
        let cells: Vec<String> =
            line.iter().zip(&widths).map(|(text, width)| format!("{text:<width$}")).collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tables_align_columns_and_show_missing_cells_as_dashes() {
        let rows = [
            json!({"name": "web", "addresses": ["10.0.0.1", "fd00::1"], "ready": true}),
            json!({"name": "database"}),
        ];
        let text = table(&rows, &["name", "addresses", "ready"]);
        assert_eq!(
            text,
            "NAME       ADDRESSES          READY\nweb        10.0.0.1,fd00::1   true\ndatabase   -                  -\n"
        );
    }
}
