//! How a notification leaves: a [`Sender`] (email, SMS, push…). The shop
//! ships the log sender, which writes what it would send to the log; a real
//! one implements the same trait.

use futures::future::BoxFuture;

use crate::Notification;

pub trait Sender: Send + Sync + 'static {
    /// The channel it sends on (`email`, `sms`, `push`, `log`).
    fn channel(&self) -> &str;
    /// Sends; an `Err` is retried later.
    fn send<'a>(&'a self, notification: &'a Notification) -> BoxFuture<'a, Result<(), String>>;
}

/// Writes each notification to the log (target `notifications`).
pub struct LogSender;

impl Sender for LogSender {
    fn channel(&self) -> &str {
        "log"
    }

    fn send<'a>(&'a self, n: &'a Notification) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            tracing::info!(target: "notifications", user_id = %n.user_id, subject = %n.subject, body = %n.body, "notification sent");
            Ok(())
        })
    }
}
