//! Read-only SQL: a statement is parsed with DataFusion's own parser and let through only
//! if it is exactly one SELECT / WITH / EXPLAIN of one, and reads nothing but the export's
//! tables. Everything else is refused here, with a specific code, before planning; the
//! planner's `SQLOptions` (no DDL, no DML, no statements) is the second fence.

use std::ops::ControlFlow;

use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{Expr, ObjectName, Statement, TableFactor, Visit, Visitor};

/// Why a statement is refused (each a stable API code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the SQL does not parse: {0}")]
    Parse(String),
    #[error("no statement")]
    Empty,
    #[error("exactly one statement is allowed, got {0}")]
    MultipleStatements(usize),
    #[error("DDL is not allowed (read-only): {0}")]
    Ddl(&'static str),
    #[error("data changes are not allowed (read-only): {0}")]
    Dml(&'static str),
    #[error("COPY is not allowed (read-only)")]
    Copy,
    #[error("only SELECT, WITH and EXPLAIN are allowed; got {0}")]
    NotAQuery(String),
    #[error("reading files or URLs is not allowed: {0}")]
    FileAccess(String),
}

impl Refusal {
    /// The code of the error envelope.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Parse(_) => "SQL_PARSE_ERROR",
            Refusal::Empty => "SQL_EMPTY",
            Refusal::MultipleStatements(_) => "SQL_MULTIPLE_STATEMENTS",
            Refusal::Ddl(_) => "SQL_DDL_NOT_ALLOWED",
            Refusal::Dml(_) => "SQL_DML_NOT_ALLOWED",
            Refusal::Copy => "SQL_COPY_NOT_ALLOWED",
            Refusal::NotAQuery(_) => "SQL_NOT_A_QUERY",
            Refusal::FileAccess(_) => "SQL_FILE_ACCESS_NOT_ALLOWED",
        }
    }
}

/// Table functions and scalar functions (of DataFusion's CLI, DuckDB, Spark) that read
/// files; none is registered here, and naming one is refused outright.
const FILE_FUNCTIONS: &[&str] = &[
    "read_parquet",
    "read_csv",
    "read_csv_auto",
    "read_json",
    "read_json_auto",
    "read_ndjson",
    "read_text",
    "read_blob",
    "read_avro",
    "parquet_scan",
    "parquet_metadata",
    "parquet_schema",
    "glob",
    "pg_read_file",
    "pg_read_binary_file",
    "lo_import",
];

/// Checks `sql`; `Ok` means: one read-only query.
pub fn check(sql: &str) -> Result<(), Refusal> {
    let mut statements = DFParserBuilder::new(sql)
        .build()
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| Refusal::Parse(e.strip_backtrace()))?;
    match statements.len() {
        0 => return Err(Refusal::Empty),
        1 => {}
        n => return Err(Refusal::MultipleStatements(n)),
    }
    let Some(statement) = statements.pop_front() else {
        return Err(Refusal::Empty);
    };
    check_df_statement(&statement)
}

fn check_df_statement(s: &DfStatement) -> Result<(), Refusal> {
    match s {
        DfStatement::Statement(s) => check_statement(s),
        DfStatement::Explain(e) => check_df_statement(&e.statement),
        DfStatement::CreateExternalTable(_) => Err(Refusal::Ddl("CREATE EXTERNAL TABLE")),
        DfStatement::CopyTo(_) => Err(Refusal::Copy),
        DfStatement::Reset(_) => Err(Refusal::NotAQuery("RESET".into())),
    }
}

fn check_statement(s: &Statement) -> Result<(), Refusal> {
    match s {
        Statement::Query(_) => {
            let mut v = ReadOnlyVisitor;
            match s.visit(&mut v) {
                ControlFlow::Break(r) => Err(r),
                ControlFlow::Continue(()) => Ok(()),
            }
        }
        Statement::Explain { statement, .. } => check_statement(statement),
        other => {
            // The statement's leading keyword classifies it; sqlparser prints statements
            // back as SQL, starting with that keyword.
            let text = other.to_string();
            let keyword = text
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase();
            Err(match keyword.as_str() {
                "CREATE" => Refusal::Ddl("CREATE"),
                "DROP" => Refusal::Ddl("DROP"),
                "ALTER" => Refusal::Ddl("ALTER"),
                "TRUNCATE" => Refusal::Ddl("TRUNCATE"),
                "INSERT" => Refusal::Dml("INSERT"),
                "UPDATE" => Refusal::Dml("UPDATE"),
                "DELETE" => Refusal::Dml("DELETE"),
                "MERGE" => Refusal::Dml("MERGE"),
                "COPY" => Refusal::Copy,
                _ => Refusal::NotAQuery(keyword),
            })
        }
    }
}

/// Refuses file-reading functions and table names that look like paths or URLs.
struct ReadOnlyVisitor;

fn last_name(name: &ObjectName) -> String {
    name.0
        .last()
        .map(|p| p.to_string().trim_matches(['"', '\'', '`']).to_ascii_lowercase())
        .unwrap_or_default()
}

impl Visitor for ReadOnlyVisitor {
    type Break = Refusal;

    fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<Refusal> {
        let name = match t {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => Some(last_name(name)),
            _ => None,
        };
        match name {
            Some(n) if FILE_FUNCTIONS.contains(&n.as_str()) => {
                ControlFlow::Break(Refusal::FileAccess(n))
            }
            _ => ControlFlow::Continue(()),
        }
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<Refusal> {
        for part in &relation.0 {
            let p = part.to_string();
            if p.contains(['/', '\\', ':']) || p.trim_matches(['"', '\'']).contains('.') {
                return ControlFlow::Break(Refusal::FileAccess("a table named like a path".into()));
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<Refusal> {
        if let Expr::Function(f) = e {
            let n = last_name(&f.name);
            if FILE_FUNCTIONS.contains(&n.as_str()) {
                return ControlFlow::Break(Refusal::FileAccess(n));
            }
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(sql: &str) -> &'static str {
        check(sql).err().map_or("OK", |r| r.code())
    }

    #[test]
    fn lets_queries_through() {
        for sql in [
            "SELECT 1",
            "select metric, count(*) from samples where date = '2026-11-01' group by metric",
            "WITH t AS (SELECT * FROM rollups) SELECT count(*) FROM t",
            "EXPLAIN SELECT * FROM samples",
            "EXPLAIN ANALYZE SELECT * FROM samples",
            "SELECT * FROM generate_series(1, 3)",
            "SELECT 1;",
        ] {
            assert_eq!(code(sql), "OK", "{sql}");
        }
    }

    #[test]
    fn refuses_everything_else_with_a_specific_code() {
        for (sql, expected) in [
            ("", "SQL_EMPTY"),
            ("SELEC 1", "SQL_PARSE_ERROR"),
            ("SELECT 1; SELECT 2", "SQL_MULTIPLE_STATEMENTS"),
            ("SELECT 1; DROP TABLE samples", "SQL_MULTIPLE_STATEMENTS"),
            ("CREATE TABLE t (a int)", "SQL_DDL_NOT_ALLOWED"),
            ("CREATE VIEW v AS SELECT 1", "SQL_DDL_NOT_ALLOWED"),
            ("CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/etc'", "SQL_DDL_NOT_ALLOWED"),
            ("DROP TABLE samples", "SQL_DDL_NOT_ALLOWED"),
            ("INSERT INTO samples VALUES (1)", "SQL_DML_NOT_ALLOWED"),
            ("DELETE FROM samples", "SQL_DML_NOT_ALLOWED"),
            ("UPDATE samples SET value = 1", "SQL_DML_NOT_ALLOWED"),
            ("COPY samples TO '/tmp/x.parquet'", "SQL_COPY_NOT_ALLOWED"),
            ("EXPLAIN COPY samples TO '/tmp/x.parquet'", "SQL_COPY_NOT_ALLOWED"),
            ("EXPLAIN INSERT INTO samples VALUES (1)", "SQL_DML_NOT_ALLOWED"),
            ("SET datafusion.execution.target_partitions = 1", "SQL_NOT_A_QUERY"),
            ("SHOW TABLES", "SQL_NOT_A_QUERY"),
            ("SELECT * FROM read_parquet('/etc/passwd')", "SQL_FILE_ACCESS_NOT_ALLOWED"),
            ("SELECT * FROM '/etc/passwd'", "SQL_FILE_ACCESS_NOT_ALLOWED"),
            ("SELECT * FROM \"s3://bucket/x.parquet\"", "SQL_FILE_ACCESS_NOT_ALLOWED"),
            ("SELECT read_csv('/etc/passwd')", "SQL_FILE_ACCESS_NOT_ALLOWED"),
            (
                "WITH x AS (SELECT * FROM read_json('/x')) SELECT * FROM x",
                "SQL_FILE_ACCESS_NOT_ALLOWED",
            ),
        ] {
            assert_eq!(code(sql), expected, "{sql}");
        }
    }
}
