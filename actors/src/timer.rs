//! Periodic messages to an actor: one timer for every actor that ticks.
//!
//! Not ractor's `send_interval`: its interval keeps tokio's default of firing every missed
//! tick at once after a stall (a paused process, an overloaded core), which would queue a
//! burst of ticks at an actor that is already behind. Here a late tick is sent once and
//! the next ones keep their period.

use std::time::Duration;

use ractor::{ActorRef, Message};
use tokio::time::MissedTickBehavior;

/// Sends `message()` to `actor` every `period`, the first one `period` from now. Ends
/// when the actor does (its messages can no longer be sent).
pub fn send_every<M, F>(actor: &ActorRef<M>, period: Duration, message: F)
where
    M: Message,
    F: Fn() -> M + Send + 'static,
{
    let actor = actor.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            ticks.tick().await;
            if actor.send_message(message()).is_err() {
                break;
            }
        }
    });
}
