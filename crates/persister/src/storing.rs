//! Storing one batch on the blocking pool: one transaction for the whole batch; when Postgres is fine but
//! refuses it, row by row, so that one bad entry goes to the dead-letter stream and does not hold back its
//! neighbours.

use anyhow::Context;
use diesel::{Connection, PgConnection, RunQueryDsl};
use store::NewMessage;

/// On the blocking pool: store the batch in one transaction; if Postgres is fine but refuses it, store
/// row by row and report the rows it refuses. Returns the connection when it is still usable.
#[allow(clippy::type_complexity)]
pub fn store_blocking(
    conn: Option<PgConnection>,
    url: &str,
    rows: &[NewMessage],
    tries: u64,
) -> (
    Option<PgConnection>,
    anyhow::Result<(usize, Vec<(usize, String)>)>,
) {
    let mut conn = match conn {
        Some(conn) => conn,
        None => match PgConnection::establish(url).context("connecting to Postgres") {
            Ok(conn) => conn,
            Err(e) => return (None, Err(e)),
        },
    };
    let whole = match store::write::store_batch(&mut conn, rows) {
        Ok(n) => return (Some(conn), Ok((n, Vec::new()))),
        Err(e) => e,
    };
    // Only an error about the data itself splits the batch; anything else (connection lost, disk full,
    // read-only after a failover, a timeout) is retried whole, with backoff, and nothing is acknowledged.
    if !refuses_data(&whole) {
        let usable = diesel::sql_query("SELECT 1").execute(&mut conn).is_ok();
        return (
            usable.then_some(conn),
            Err(anyhow::Error::new(whole).context("storing a batch")),
        );
    }
    log::warn!(
        "Postgres refused a batch of {} ({whole}); storing it row by row",
        rows.len()
    );
    let (mut new_rows, mut rejected) = (0, Vec::new());
    for (i, row) in rows.iter().enumerate() {
        // Each row gets `MAX_DELIVERIES` tries before it is declared unstorable.
        let mut last_error = None;
        for _ in 0..tries.max(1) {
            match store::write::store_batch(&mut conn, std::slice::from_ref(row)) {
                Ok(n) => {
                    new_rows += n;
                    last_error = None;
                    break;
                }
                Err(e) if refuses_data(&e) => last_error = Some(e),
                Err(e) => {
                    // Not the row's fault after all: what was committed is idempotent; retry everything.
                    let usable = diesel::sql_query("SELECT 1").execute(&mut conn).is_ok();
                    return (
                        usable.then_some(conn),
                        Err(anyhow::Error::new(e).context("storing a batch row by row")),
                    );
                }
            }
        }
        if let Some(e) = last_error {
            rejected.push((i, e.to_string()));
        }
    }
    (Some(conn), Ok((new_rows, rejected)))
}

/// Whether Postgres refused the rows themselves (a constraint, or a value its types reject) rather than
/// failing for a reason that retrying can cure.
fn refuses_data(e: &diesel::result::Error) -> bool {
    use diesel::result::DatabaseErrorKind as Kind;
    match e {
        diesel::result::Error::DatabaseError(kind, info) => match kind {
            Kind::CheckViolation
            | Kind::NotNullViolation
            | Kind::ForeignKeyViolation
            | Kind::ExclusionViolation => true,
            // SQLSTATE class 22 (data exception) arrives as `Unknown`: recognise it by its wording.
            Kind::Unknown => {
                let m = info.message();
                m.starts_with("invalid input syntax")
                    || m.starts_with("invalid byte sequence")
                    || m.contains("out of range")
                    || m.starts_with("unsupported Unicode escape")
            }
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use diesel::result::{DatabaseErrorKind as Kind, Error};

    fn db(kind: Kind, message: &str) -> Error {
        Error::DatabaseError(kind, Box::new(message.to_owned()))
    }

    #[test]
    fn only_errors_about_the_rows_themselves_split_a_batch() {
        assert!(super::refuses_data(&db(
            Kind::CheckViolation,
            "new row violates check constraint"
        )));
        assert!(super::refuses_data(&db(
            Kind::Unknown,
            "invalid input syntax for type json"
        )));
        // Retried whole, never dead-lettered: they are about the server, not the data.
        assert!(!super::refuses_data(&db(
            Kind::ReadOnlyTransaction,
            "cannot execute COPY in a read-only transaction"
        )));
        assert!(!super::refuses_data(&db(
            Kind::Unknown,
            "could not extend file: No space left on device"
        )));
        assert!(!super::refuses_data(&db(
            Kind::Unknown,
            "canceling statement due to statement timeout"
        )));
        assert!(!super::refuses_data(&db(
            Kind::ClosedConnection,
            "server closed the connection"
        )));
        assert!(!super::refuses_data(&Error::NotFound));
    }
}
