//! Live delivery, resume without gap or duplicate, the gap frame, slow clients, and refusals.

mod delivery;
mod history;
mod refusals;
mod slow_clients;
