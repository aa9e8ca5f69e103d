//! Push subscription operations: set (with every setting checked), read, delete, each
//! sent to the group's coordinator, which replicates the settings in the group's offsets
//! partition (see `crate::push` for the pushing).

use std::collections::BTreeSet;

use psubd_actors::controller::access::{Operation, ResourceType};
use psubd_actors::coordinator::{GroupAnswer, GroupDescription, GroupRequest, PushView};
use psubd_actors::push::PushConfig;

use super::groups::GroupName;
use super::{Caller, Result, Service};
use crate::error::ApiError;

/// Most topics one push subscription names: each partition costs a task on the
/// coordinator's node.
pub const MAX_PUSH_TOPICS: usize = 10;

/// Longest endpoint URL.
pub const MAX_ENDPOINT_LEN: usize = 2_048;

/// Longest secret, in bytes.
pub const MAX_SECRET_LEN: usize = 256;

/// Bounds and defaults of each setting (docs/api.md § Push subscriptions).
pub const MAX_IN_FLIGHT: (u32, u32, u32) = (1, 100, 1);
/// `timeout_ms`: min, max, default.
pub const TIMEOUT_MS: (u64, u64, u64) = (100, 120_000, 10_000);
/// `min_backoff_ms`: min, max, default.
pub const MIN_BACKOFF_MS: (u64, u64, u64) = (10, 3_600_000, 1_000);
/// `max_backoff_ms`: min (also at least `min_backoff_ms`), max, default.
pub const MAX_BACKOFF_MS: (u64, u64, u64) = (10, 3_600_000, 60_000);
/// `max_deliveries`: min, max, default.
pub const MAX_DELIVERIES: (u32, u32, u32) = (1, 100, 5);

/// Takes a setting's default and checks its bounds.
fn bounded<T>(name: &str, given: Option<T>, (min, max, default): (T, T, T)) -> Result<T>
where
    T: PartialOrd + Copy + std::fmt::Display,
{
    let value = given.unwrap_or(default);
    if value < min || value > max {
        return Err(ApiError::InvalidRequest {
            message: format!("{name} must be between {min} and {max}"),
        });
    }
    Ok(value)
}

/// Checks a push endpoint: an absolute `http` or `https` URL with a host and no
/// fragment.
///
/// # Errors
/// 400 `invalid_request`.
pub fn check_endpoint(endpoint: &str) -> Result<()> {
    let invalid = |why: &str| ApiError::InvalidRequest {
        message: format!("endpoint {why}"),
    };
    if endpoint.len() > MAX_ENDPOINT_LEN {
        return Err(invalid(&format!(
            "must be at most {MAX_ENDPOINT_LEN} bytes"
        )));
    }
    let url = reqwest::Url::parse(endpoint)
        .map_err(|e| invalid(&format!("is not an absolute URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("must be an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("must name a host"));
    }
    if url.fragment().is_some() {
        return Err(invalid("must not have a #fragment"));
    }
    Ok(())
}

/// A push subscription's settings as a client gives them (`None`: the default).
#[derive(Clone, Debug, Default)]
pub struct PushSettings {
    /// Subscribed topics.
    pub topics: Vec<String>,
    /// The URL records are POSTed to.
    pub endpoint: String,
    /// See [`PushConfig::max_in_flight`].
    pub max_in_flight: Option<u32>,
    /// See [`PushConfig::timeout_ms`].
    pub timeout_ms: Option<u64>,
    /// See [`PushConfig::min_backoff_ms`].
    pub min_backoff_ms: Option<u64>,
    /// See [`PushConfig::max_backoff_ms`].
    pub max_backoff_ms: Option<u64>,
    /// See [`PushConfig::max_deliveries`].
    pub max_deliveries: Option<u32>,
    /// See [`PushConfig::dead_letter_topic`].
    pub dead_letter_topic: Option<String>,
    /// See [`PushConfig::secret`].
    pub secret: Option<String>,
}

impl PushSettings {
    /// Checks every setting but the topics' existence and fills in the defaults.
    ///
    /// # Errors
    /// 400 `invalid_request` (or `invalid_name` for a topic name).
    pub fn check(self) -> Result<PushConfig> {
        if self.topics.is_empty() || self.topics.len() > MAX_PUSH_TOPICS {
            return Err(ApiError::InvalidRequest {
                message: format!("topics must list 1 to {MAX_PUSH_TOPICS} topics"),
            });
        }
        let unique: BTreeSet<&String> = self.topics.iter().collect();
        if unique.len() != self.topics.len() {
            return Err(ApiError::InvalidRequest {
                message: "topics must not repeat a topic".into(),
            });
        }
        for topic in &self.topics {
            super::names::group_topic(topic)?;
        }
        check_endpoint(&self.endpoint)?;
        let max_in_flight = bounded("max_in_flight", self.max_in_flight, MAX_IN_FLIGHT)?;
        let timeout_ms = bounded("timeout_ms", self.timeout_ms, TIMEOUT_MS)?;
        let min_backoff_ms = bounded("min_backoff_ms", self.min_backoff_ms, MIN_BACKOFF_MS)?;
        let max_backoff_ms = bounded("max_backoff_ms", self.max_backoff_ms, MAX_BACKOFF_MS)?;
        if max_backoff_ms < min_backoff_ms {
            return Err(ApiError::InvalidRequest {
                message: "max_backoff_ms must be at least min_backoff_ms".into(),
            });
        }
        let max_deliveries = bounded("max_deliveries", self.max_deliveries, MAX_DELIVERIES)?;
        if let Some(dead) = &self.dead_letter_topic {
            super::names::group_topic(dead)?;
            if self.topics.contains(dead) {
                return Err(ApiError::InvalidRequest {
                    message: "dead_letter_topic must not be a subscribed topic".into(),
                });
            }
        }
        if let Some(secret) = &self.secret {
            if secret.is_empty() || secret.len() > MAX_SECRET_LEN {
                return Err(ApiError::InvalidRequest {
                    message: format!("secret must be 1 to {MAX_SECRET_LEN} bytes"),
                });
            }
        }
        Ok(PushConfig {
            topics: self.topics,
            endpoint: self.endpoint,
            max_in_flight,
            timeout_ms,
            min_backoff_ms,
            max_backoff_ms,
            max_deliveries,
            dead_letter_topic: self.dead_letter_topic,
            secret: self.secret,
        })
    }
}

impl Service {
    /// Makes a group without members a push subscription (or changes its settings).
    /// Answers the settings as stored.
    ///
    /// # Errors
    /// 400 for a bad setting, 403 without `alter` on the group, `read` on the topics or
    /// `write` on the dead-letter topic, 404 for an unknown topic, 409
    /// `group_not_empty`, 409 `limit_reached` for a new subscription past
    /// `--max-push-subscriptions`; 503 / 504 as for any group write.
    pub async fn set_push(
        &self,
        caller: &Caller,
        group: &GroupName,
        settings: PushSettings,
    ) -> Result<PushConfig> {
        self.authorize(
            caller,
            ResourceType::Group,
            group.as_str(),
            Operation::Alter,
        )?;
        let config = settings.check()?;
        for topic in &config.topics {
            self.group_topic(caller, topic).await?;
        }
        if let Some(dead) = &config.dead_letter_topic {
            self.authorize(caller, ResourceType::Topic, dead, Operation::Write)?;
            self.edge.topic(dead).await?;
        }
        self.edge
            .group(
                group.as_str(),
                GroupRequest::SetPush {
                    config: config.clone(),
                    max_subscriptions: self.limits.max_push_subscriptions,
                },
            )
            .await?;
        Ok(config)
    }

    /// A push subscription's settings and state, with the coordinator's node.
    ///
    /// # Errors
    /// 404 `push_not_found` when the group is not a push subscription.
    pub async fn push_subscription(
        &self,
        caller: &Caller,
        group: &GroupName,
    ) -> Result<(GroupDescription, PushView)> {
        let description = match self.describe_group(caller, group).await {
            Err(ApiError::GroupNotFound { .. }) => {
                return Err(ApiError::PushNotFound {
                    group: group.as_str().to_owned(),
                })
            }
            other => other?,
        };
        match description.push.clone() {
            Some(view) => Ok((description, *view)),
            None => Err(ApiError::PushNotFound {
                group: group.as_str().to_owned(),
            }),
        }
    }

    /// Ends a push subscription; its committed offsets stay.
    ///
    /// # Errors
    /// 404 `push_not_found` when the group is not one.
    pub async fn delete_push(&self, caller: &Caller, group: &GroupName) -> Result<()> {
        self.authorize(
            caller,
            ResourceType::Group,
            group.as_str(),
            Operation::Alter,
        )?;
        match self
            .edge
            .group(group.as_str(), GroupRequest::DeletePush)
            .await?
        {
            GroupAnswer::Done => Ok(()),
            other => Err(ApiError::Internal {
                detail: format!("push delete answered {other:?}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> PushSettings {
        PushSettings {
            topics: vec!["orders".into()],
            endpoint: "https://example.com/hook".into(),
            ..PushSettings::default()
        }
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let config = settings().check().unwrap();
        assert_eq!(config.max_in_flight, 1);
        assert_eq!(config.timeout_ms, 10_000);
        assert_eq!(config.min_backoff_ms, 1_000);
        assert_eq!(config.max_backoff_ms, 60_000);
        assert_eq!(config.max_deliveries, 5);
        assert_eq!(config.dead_letter_topic, None);
        assert_eq!(config.secret, None);
    }

    /// Every setting out of its bounds is refused with a message naming it.
    #[test]
    fn every_setting_is_bounded() {
        let refused = |change: fn(&mut PushSettings), what: &str| {
            let mut s = settings();
            change(&mut s);
            match s.check() {
                Err(ApiError::InvalidRequest { message }) => {
                    assert!(message.contains(what), "{message} should name {what}")
                }
                other => panic!("{what}: expected 400, got {other:?}"),
            }
        };
        refused(|s| s.topics.clear(), "topics");
        refused(|s| s.topics = vec!["a".into(); 2], "repeat");
        refused(
            |s| s.topics = (0..11).map(|i| format!("t{i}")).collect(),
            "topics",
        );
        refused(|s| s.endpoint = "ftp://example.com/".into(), "http");
        refused(|s| s.endpoint = "/relative".into(), "absolute");
        refused(|s| s.endpoint = "http://example.com/#x".into(), "fragment");
        refused(
            |s| s.endpoint = format!("http://example.com/{}", "a".repeat(3000)),
            "endpoint",
        );
        refused(|s| s.max_in_flight = Some(0), "max_in_flight");
        refused(|s| s.max_in_flight = Some(101), "max_in_flight");
        refused(|s| s.timeout_ms = Some(99), "timeout_ms");
        refused(|s| s.timeout_ms = Some(120_001), "timeout_ms");
        refused(|s| s.min_backoff_ms = Some(9), "min_backoff_ms");
        refused(|s| s.max_backoff_ms = Some(3_600_001), "max_backoff_ms");
        refused(
            |s| {
                s.min_backoff_ms = Some(5_000);
                s.max_backoff_ms = Some(4_000);
            },
            "at least min_backoff_ms",
        );
        refused(|s| s.max_deliveries = Some(0), "max_deliveries");
        refused(|s| s.max_deliveries = Some(101), "max_deliveries");
        refused(
            |s| s.dead_letter_topic = Some("orders".into()),
            "dead_letter",
        );
        refused(|s| s.secret = Some(String::new()), "secret");
        refused(|s| s.secret = Some("x".repeat(257)), "secret");
        assert!(matches!(
            PushSettings {
                topics: vec!["bad name".into()],
                ..settings()
            }
            .check(),
            Err(ApiError::InvalidName { .. })
        ));
        let mut fine = settings();
        fine.endpoint = "http://127.0.0.1:8080/push?x=1".into();
        fine.max_in_flight = Some(100);
        fine.dead_letter_topic = Some("orders-dead".into());
        fine.secret = Some("s".into());
        assert!(fine.check().is_ok());
    }
}
