//! Storing one batch on the blocking pool: one transaction for the whole batch; when Postgres is fine but
//! refuses it, row by row, so that one bad entry does not hold back its neighbours.
//!
//! What is whose fault is decided without reading Postgres' English (its messages follow `lc_messages`):
//! - a row Postgres would refuse as data (SQLSTATE class 22: bad JSON, a timestamp out of range) is
//!   caught before it is sent ([`NewMessage::refused_by_postgres`]) and dead-lettered: it never can be
//!   stored;
//! - a row that reuses a stream position another message holds is dead-lettered (see `store::write`);
//! - a constraint violation (`NOT NULL`, `CHECK`, foreign key, exclusion) is about the schema, which a
//!   rolling migration changes for a while: the row is *held* — left pending, not acknowledged — and
//!   comes back with the next claim; only after `MAX_DELIVERIES` deliveries is it dead-lettered (by
//!   its delivery count, in `consumer.rs`);
//! - anything else (connection lost, disk full, read-only, a statement or lock timeout) is the server's:
//!   the whole batch is retried with backoff and nothing is acknowledged or dead-lettered.

use anyhow::Context;
use diesel::{Connection, PgConnection, RunQueryDsl};
use store::NewMessage;

/// What became of a batch that Postgres did not fail as a whole.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Rows that were not there before.
    pub new_rows: usize,
    /// Rows that never can be stored: (index in the batch, why). Dead-lettered, then acknowledged.
    pub dead: Vec<(usize, String)>,
    /// Rows the schema refuses for now: (index, why). Left pending for a later delivery.
    pub held: Vec<(usize, String)>,
}

/// On the blocking pool: store the batch in one transaction; if Postgres is fine but refuses it, store
/// row by row. Returns the connection when it is still usable.
pub fn store_blocking(
    conn: Option<PgConnection>,
    url: &str,
    rows: &[NewMessage],
) -> (Option<PgConnection>, anyhow::Result<Outcome>) {
    let mut out = Outcome::default();
    // Checked before connecting: a batch of nothing but refused rows needs no Postgres.
    let mut valid = Vec::with_capacity(rows.len()); // indexes into `rows`
    for (i, row) in rows.iter().enumerate() {
        match row.refused_by_postgres() {
            Some(why) => out.dead.push((i, why)),
            None => valid.push(i),
        }
    }
    if valid.is_empty() {
        return (conn, Ok(out));
    }
    let mut conn = match conn {
        Some(conn) => conn,
        None => match PgConnection::establish(url).context("connecting to Postgres") {
            Ok(conn) => conn,
            Err(e) => return (None, Err(e)),
        },
    };
    // Copied only when some rows were refused: the common batch goes out as it came.
    let batch: std::borrow::Cow<'_, [NewMessage]> = if valid.len() == rows.len() {
        rows.into()
    } else {
        valid.iter().map(|&i| rows[i].clone()).collect()
    };
    let whole = match store::write::store_batch(&mut conn, &batch) {
        Ok(written) => {
            out.new_rows = written.new;
            out.dead.extend(
                written
                    .conflicts
                    .into_iter()
                    .map(|(at, held_by)| (valid[at], position_taken(&rows[valid[at]], &held_by))),
            );
            return (Some(conn), Ok(out));
        }
        Err(e) => e,
    };
    if !schema_refuses(&whole) {
        return server_error(conn, whole, "storing a batch");
    }
    log::warn!(
        "Postgres refused a batch of {} ({whole}); storing it row by row",
        batch.len()
    );
    for (&i, row) in valid.iter().zip(batch.iter()) {
        match store::write::store_batch(&mut conn, std::slice::from_ref(row)) {
            Ok(written) => {
                out.new_rows += written.new;
                if let Some((_, held_by)) = written.conflicts.first() {
                    out.dead.push((i, position_taken(row, held_by)));
                }
            }
            Err(e) if schema_refuses(&e) => out.held.push((i, e.to_string())),
            // Not the row's fault after all: what was committed is idempotent; retry everything.
            Err(e) => return server_error(conn, e, "storing a batch row by row"),
        }
    }
    out.dead.sort_unstable_by_key(|(i, _)| *i);
    (Some(conn), Ok(out))
}

fn position_taken(row: &NewMessage, held_by: &str) -> String {
    format!(
        "stream position {} already holds message {held_by}: a different message reused it (Redis lost \
         or reissued the id); the stored one is kept",
        row.stream_id()
    )
}

/// The batch failed for a reason that retrying can cure; the connection is kept when it still answers.
fn server_error(
    mut conn: PgConnection,
    e: diesel::result::Error,
    doing: &'static str,
) -> (Option<PgConnection>, anyhow::Result<Outcome>) {
    let usable = diesel::sql_query("SELECT 1").execute(&mut conn).is_ok();
    (
        usable.then_some(conn),
        Err(anyhow::Error::new(e).context(doing)),
    )
}

/// Whether the schema refused a row (a constraint), as opposed to the server failing. Diesel maps these
/// SQLSTATEs (23502, 23514, 23503, 23P01) to kinds itself, so no message text is read.
fn schema_refuses(e: &diesel::result::Error) -> bool {
    use diesel::result::DatabaseErrorKind as Kind;
    matches!(
        e,
        diesel::result::Error::DatabaseError(
            Kind::CheckViolation
                | Kind::NotNullViolation
                | Kind::ForeignKeyViolation
                | Kind::ExclusionViolation,
            _
        )
    )
}

#[cfg(test)]
mod tests {
    use diesel::result::{DatabaseErrorKind as Kind, Error};

    fn db(kind: Kind, message: &str) -> Error {
        Error::DatabaseError(kind, Box::new(message.to_owned()))
    }

    #[test]
    fn only_constraint_violations_split_a_batch_and_no_message_text_is_read() {
        assert!(super::schema_refuses(&db(Kind::CheckViolation, "anything")));
        assert!(super::schema_refuses(&db(
            Kind::NotNullViolation,
            "anything"
        )));
        // Retried whole, never held or dead-lettered: the server's, in whatever language.
        for message in [
            "invalid input syntax for type json",
            "ungültige Eingabesyntax für Typ json",
            "could not extend file: No space left on device",
            "canceling statement due to lock timeout",
        ] {
            assert!(!super::schema_refuses(&db(Kind::Unknown, message)));
        }
        assert!(!super::schema_refuses(&db(
            Kind::ReadOnlyTransaction,
            "cannot execute COPY in a read-only transaction"
        )));
        assert!(!super::schema_refuses(&Error::NotFound));
    }
}
