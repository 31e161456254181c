//! The SQL that creates fasttasks' tables. The files under `sql/` are the single source of truth: the
//! Django migration runs these statements (via `fasttasks._core.schema_statements`) and the Rust tests
//! install the schema with the same function.

use crate::config::Dialect;

const POSTGRES_SCHEMA: &str = include_str!("../sql/postgres_schema.sql");
const SQLITE_SCHEMA: &str = include_str!("../sql/sqlite_schema.sql");

/// The statements creating the schema, in order, without comments-only fragments.
pub fn schema_statements(dialect: Dialect) -> Vec<String> {
    let text = match dialect {
        Dialect::Postgres => POSTGRES_SCHEMA,
        Dialect::Sqlite => SQLITE_SCHEMA,
    };
    split_statements(text)
}

/// Splits on lines holding only ";" and drops fragments that are only comments or blank.
fn split_statements(text: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.trim() == ";" {
            push_statement(&mut statements, &mut current);
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    push_statement(&mut statements, &mut current);
    statements
}

fn push_statement(statements: &mut Vec<String>, current: &mut String) {
    let has_code =
        current.lines().any(|line| !line.trim().is_empty() && !line.trim_start().starts_with("--"));
    if has_code {
        statements.push(current.trim().to_string());
    }
    current.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_dialects_create_the_table_and_indexes() {
        for dialect in [Dialect::Postgres, Dialect::Sqlite] {
            let statements = schema_statements(dialect);
            assert!(statements[0].contains("CREATE TABLE fasttasks_task"));
            assert!(statements.iter().any(|s| s.contains("fasttasks_task_ready_idx")));
            assert!(statements.iter().all(|s| !s.trim_end().ends_with(';')));
        }
    }
}
