//! Topic admin: create, change, delete, describe and list topics, and each partition's
//! replica status. Metadata changes go to the controller leader wherever it runs.

use psubd_actors::controller::access::{Operation, ResourceType};
use psubd_actors::controller::TopicUpdate;
use psubd_actors::topic::{is_internal, PartitionPlacement, TopicConfig, TopicMeta};

use super::{names, Caller, Result, Service};
use crate::error::ApiError;
use crate::protocol::{ForwardRequest, ForwardResponse, ReplicaStatus};

impl Service {
    /// How many nodes the cluster has (the most replicas a partition may have): the
    /// controller group's voters.
    pub fn cluster_size(&self) -> usize {
        let voters = self.edge.broker().controller_voters().len();
        if voters == 0 {
            self.edge.broker().raft_node().peers().len()
        } else {
            voters
        }
    }

    /// Creates a topic, and answers once every partition can take a write (past the
    /// write timeout the topic still exists; its remaining partitions are electing, and
    /// requests to them wait for their leader).
    ///
    /// # Errors
    /// 400 for a bad name, 403 without `create` on the topic or the cluster, 409 when it
    /// exists, 503 / 504 from the controller.
    pub async fn create_topic(
        &self,
        caller: &Caller,
        name: String,
        config: TopicConfig,
    ) -> Result<TopicMeta> {
        names::new_topic(&name)?;
        self.authorize_topic_creation(caller, &name)?;
        let request = ForwardRequest::CreateTopic {
            name: name.clone(),
            config,
        };
        let meta = topic_answer(self.edge.controller(request, &name).await?, "create")?;
        if !self.edge.await_leaders(&meta).await {
            tracing::debug!(topic = %meta.name, "partitions still electing at the write timeout");
        }
        Ok(meta)
    }

    /// Changes a topic's mutable settings and raises its partition count, each when
    /// given (the count first). New partitions are answered once each has a leader, as at
    /// create.
    ///
    /// # Errors
    /// 403 without `alter` on the topic; 404 for unknown and internal topics (before
    /// anything is proposed); 422 when the count does not grow; 503 / 504 from the
    /// controller.
    pub async fn update_topic(
        &self,
        caller: &Caller,
        name: &str,
        update: TopicUpdate,
        partitions: Option<u32>,
    ) -> Result<TopicMeta> {
        self.authorize(caller, ResourceType::Topic, name, Operation::Alter)?;
        let mut meta = None;
        if let Some(partitions) = partitions {
            let request = ForwardRequest::AddPartitions {
                name: name.to_string(),
                partitions,
            };
            let grown = topic_answer(self.edge.controller(request, name).await?, "grow")?;
            // Requests that follow the answer to this node see the new partitions.
            self.await_applied(&grown).await;
            if !self.edge.await_leaders(&grown).await {
                tracing::debug!(topic = %name, "new partitions still electing at the write timeout");
            }
            meta = Some(grown);
        }
        if update != TopicUpdate::default() {
            let request = ForwardRequest::UpdateTopic {
                name: name.to_string(),
                update,
            };
            meta = Some(topic_answer(
                self.edge.controller(request, name).await?,
                "update",
            )?);
        }
        meta.ok_or_else(|| ApiError::InvalidConfig {
            message: "nothing to change".into(),
        })
    }

    /// Waits (up to the write timeout) until this node has applied `meta`'s partition count.
    async fn await_applied(&self, meta: &TopicMeta) {
        let mut metadata = self.edge.broker().subscribe_metadata();
        let applied = metadata.wait_for(|state| {
            state
                .topics
                .get(&meta.name)
                .is_some_and(|t| t.partitions.len() >= meta.partitions.len())
        });
        if tokio::time::timeout(self.edge.write_timeout(), applied)
            .await
            .is_err()
        {
            tracing::debug!(topic = %meta.name, "new partitions not applied here at the write timeout");
        }
    }

    /// Sets a topic's duplicate window (checked by the caller).
    ///
    /// # Errors
    /// As [`Service::update_topic`].
    pub async fn set_duplicate_window(
        &self,
        caller: &Caller,
        name: &str,
        duplicate_window_ms: u64,
    ) -> Result<TopicMeta> {
        self.authorize(caller, ResourceType::Topic, name, Operation::Alter)?;
        let request = ForwardRequest::SetDuplicateWindow {
            name: name.to_string(),
            duplicate_window_ms,
        };
        topic_answer(self.edge.controller(request, name).await?, "update")
    }

    /// A topic's duplicate window as this node's metadata holds it.
    pub fn duplicate_window_ms(&self, name: &str) -> u64 {
        self.edge.broker().metadata().duplicate_window_ms(name)
    }

    /// Deletes a topic.
    ///
    /// # Errors
    /// 400 for internal topics, 403 without `delete` on the topic, 404 when unknown,
    /// 503 / 504 from the controller.
    pub async fn delete_topic(&self, caller: &Caller, name: &str) -> Result<()> {
        self.authorize(caller, ResourceType::Topic, name, Operation::Delete)?;
        if is_internal(name) {
            return Err(ApiError::InvalidName {
                message: "internal topics cannot be deleted".into(),
            });
        }
        let request = ForwardRequest::DeleteTopic {
            name: name.to_string(),
        };
        self.edge.controller(request, name).await?;
        Ok(())
    }

    /// Every user topic in this node's metadata that the caller may `describe`.
    pub fn list_topics(&self, caller: &Caller) -> Vec<TopicMeta> {
        self.edge
            .broker()
            .metadata()
            .topics
            .values()
            .filter(|t| !is_internal(&t.name))
            .filter(|t| self.permits(caller, ResourceType::Topic, &t.name, Operation::Describe))
            .cloned()
            .collect()
    }

    /// Each partition's placement and replica status (`None` when no replica answered).
    ///
    /// # Errors
    /// 404 `topic_not_found`.
    pub async fn partition_statuses(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<Vec<(PartitionPlacement, Option<ReplicaStatus>)>> {
        let meta = self.topic(caller, name, Operation::Describe).await?;
        let statuses = futures::future::join_all(
            meta.partitions
                .iter()
                .map(|p| self.edge.partition_status(p)),
        )
        .await;
        Ok(meta.partitions.into_iter().zip(statuses).collect())
    }
}

/// The topic a controller change answered.
fn topic_answer(response: ForwardResponse, what: &str) -> Result<TopicMeta> {
    match response {
        ForwardResponse::Topic(Some(meta)) => Ok(meta),
        other => Err(ApiError::Internal {
            detail: format!("{what} topic answered {other:?}"),
        }),
    }
}
