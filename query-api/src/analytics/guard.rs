//! The read-only rule for analysts' SQL, checked on the parsed statement before DataFusion
//! plans it: exactly one `SELECT`/`WITH`/`EXPLAIN` of one, and no table function except the
//! generators that read nothing. DataFusion's own `SQLOptions` (no DDL, DML or `SET`) is
//! the second fence; this one exists to answer each refusal with its own code.

use std::ops::ControlFlow;

use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{Statement, TableFactor, Visit, Visitor};
use datafusion::sql::sqlparser::dialect::GenericDialect;

use super::SqlError;

/// Table functions that generate rows and read nothing.
const ALLOWED_TABLE_FUNCTIONS: &[&str] = &["generate_series", "range", "unnest"];

/// Parses `sql` and refuses anything that is not one read-only query.
pub fn check_read_only(sql: &str) -> Result<(), SqlError> {
    let mut statements = DFParser::parse_sql_with_dialect(sql, &GenericDialect {})
        .map_err(|e| SqlError::Syntax(e.strip_backtrace()))?;
    let statement = match (statements.pop_front(), statements.is_empty()) {
        (None, _) => return Err(SqlError::Empty),
        (Some(_), false) => return Err(SqlError::MultipleStatements(statements.len() + 1)),
        (Some(s), true) => s,
    };
    check_statement(&statement)
}

fn check_statement(statement: &DfStatement) -> Result<(), SqlError> {
    match statement {
        DfStatement::Statement(s) => check_sql_statement(s),
        DfStatement::Explain(e) => check_statement(&e.statement),
        DfStatement::CreateExternalTable(_) => Err(SqlError::NotReadOnly("CREATE EXTERNAL TABLE")),
        DfStatement::CopyTo(_) => Err(SqlError::NotReadOnly("COPY")),
        DfStatement::Reset(_) => Err(SqlError::NotReadOnly("RESET")),
    }
}

fn check_sql_statement(statement: &Statement) -> Result<(), SqlError> {
    match statement {
        Statement::Query(_) => {}
        Statement::Explain { statement, .. } => return check_sql_statement(statement),
        other => return Err(SqlError::NotReadOnly(statement_kind(other))),
    }
    let mut functions = TableFunctions;
    if let ControlFlow::Break(name) = statement.visit(&mut functions) {
        return Err(SqlError::FunctionNotAllowed(name));
    }
    Ok(())
}

/// Finds the first table function that is not allowed.
struct TableFunctions;

impl Visitor for TableFunctions {
    type Break = String;

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<String> {
        let name = match factor {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => name.to_string(),
            TableFactor::TableFunction { .. } => "TABLE(...)".to_owned(),
            _ => return ControlFlow::Continue(()),
        };
        if ALLOWED_TABLE_FUNCTIONS.contains(&name.to_ascii_lowercase().as_str()) {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(name)
        }
    }
}

/// A short name for a refused statement (its first keywords), never its text.
fn statement_kind(statement: &Statement) -> &'static str {
    match statement {
        Statement::Insert(_) => "INSERT",
        Statement::Update { .. } => "UPDATE",
        Statement::Delete(_) => "DELETE",
        Statement::Merge { .. } => "MERGE",
        Statement::Copy { .. } => "COPY",
        Statement::CreateTable(_) | Statement::CreateView { .. } => "CREATE",
        Statement::Drop { .. } => "DROP",
        Statement::AlterTable { .. } => "ALTER",
        Statement::Truncate { .. } => "TRUNCATE",
        Statement::Set(_) => "SET",
        Statement::ShowVariable { .. } | Statement::ShowTables { .. } => "SHOW",
        _ => "a statement other than SELECT, WITH or EXPLAIN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(sql: &str) -> &'static str {
        match check_read_only(sql) {
            Ok(()) => "OK",
            Err(e) => e.code(),
        }
    }

    #[test]
    fn queries_pass() {
        for sql in [
            "SELECT 1",
            "select metric, count(*) from samples where date >= '2026-01-01' group by metric",
            "WITH t AS (SELECT * FROM rollups) SELECT count(*) FROM t",
            "EXPLAIN SELECT * FROM samples",
            "EXPLAIN ANALYZE SELECT * FROM samples",
            "SELECT * FROM generate_series(1, 3)",
            "SELECT a FROM (SELECT 1 AS a) s JOIN (SELECT 1 AS a) r USING (a)",
        ] {
            assert_eq!(code(sql), "OK", "{sql}");
        }
    }

    #[test]
    fn everything_else_is_refused_with_its_own_code() {
        let cases = [
            ("", "SQL_EMPTY"),
            ("  ;", "SQL_EMPTY"),
            ("SELECT 1; SELECT 2", "SQL_MULTIPLE_STATEMENTS"),
            ("SELECT 1; DROP TABLE samples", "SQL_MULTIPLE_STATEMENTS"),
            ("SELEC 1", "SQL_SYNTAX"),
            ("INSERT INTO samples VALUES (1)", "SQL_NOT_READ_ONLY"),
            ("DELETE FROM samples", "SQL_NOT_READ_ONLY"),
            ("UPDATE samples SET value = 1", "SQL_NOT_READ_ONLY"),
            ("DROP TABLE samples", "SQL_NOT_READ_ONLY"),
            ("CREATE TABLE x AS SELECT 1", "SQL_NOT_READ_ONLY"),
            ("CREATE VIEW v AS SELECT 1", "SQL_NOT_READ_ONLY"),
            (
                "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
                "SQL_NOT_READ_ONLY",
            ),
            ("COPY samples TO '/tmp/out.parquet'", "SQL_NOT_READ_ONLY"),
            ("EXPLAIN COPY samples TO '/tmp/x.csv'", "SQL_NOT_READ_ONLY"),
            (
                "EXPLAIN INSERT INTO samples VALUES (1)",
                "SQL_NOT_READ_ONLY",
            ),
            (
                "SET datafusion.execution.batch_size = 1",
                "SQL_NOT_READ_ONLY",
            ),
            (
                "SELECT * FROM read_parquet('/etc/passwd')",
                "SQL_FUNCTION_NOT_ALLOWED",
            ),
            (
                "SELECT * FROM samples s JOIN read_csv('/etc/passwd') p ON true",
                "SQL_FUNCTION_NOT_ALLOWED",
            ),
            (
                "WITH f AS (SELECT * FROM read_json('x')) SELECT * FROM f",
                "SQL_FUNCTION_NOT_ALLOWED",
            ),
        ];
        for (sql, expected) in cases {
            assert_eq!(code(sql), expected, "{sql}");
        }
    }

    #[test]
    fn refusals_never_quote_the_statement() {
        let e = check_read_only("DELETE FROM samples WHERE value = 123.456").unwrap_err();
        assert!(!e.to_string().contains("123.456"), "{e}");
    }
}
