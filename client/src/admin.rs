//! [`Admin`]: topics, consumer groups and the cluster view.

use psubd_wire::MoveReplicas;
use psubd_wire::{
    ClusterInfo, Decommission, GroupDescription, GroupOffsets, GroupSummary, PartitionStatus,
    PushRequest, PushSubscription, Reassignment, Reassignments, ResetRequest, ResetResponse, Topic,
    TopicSpec, TopicUpdate,
};
use reqwest::{Method, StatusCode};

use crate::client::{segment, Call, Client};
use crate::error::Error;

/// Administration calls. Get one with [`Client::admin`].
#[derive(Debug, Clone)]
pub struct Admin {
    client: Client,
}

impl Client {
    /// Topic, group and cluster administration through this client.
    pub fn admin(&self) -> Admin {
        Admin {
            client: self.clone(),
        }
    }
}

impl Admin {
    /// `POST /v1/topics`: creates a topic; answers once every partition has a leader.
    ///
    /// # Errors
    ///
    /// The server's error (`topic_exists`, `invalid_name`, `invalid_config`, …) or
    /// [`Error::Transport`].
    pub async fn create_topic(&self, spec: &TopicSpec) -> Result<Topic, Error> {
        let call = Call::new(Method::POST, "/v1/topics".into()).json(spec)?;
        self.client.json(&call, StatusCode::CREATED).await
    }

    /// `GET /v1/topics`: every topic (internal ones are not listed).
    ///
    /// # Errors
    ///
    /// The server's error or [`Error::Transport`].
    pub async fn list_topics(&self) -> Result<Vec<Topic>, Error> {
        let call = Call::get("/v1/topics".into());
        self.client.json(&call, StatusCode::OK).await
    }

    /// `GET /v1/topics/{t}`.
    ///
    /// # Errors
    ///
    /// `topic_not_found`, another server error, or [`Error::Transport`].
    pub async fn describe_topic(&self, topic: &str) -> Result<Topic, Error> {
        let call = Call::get(format!("/v1/topics/{}", segment(topic)));
        self.client.json(&call, StatusCode::OK).await
    }

    /// `GET /v1/topics/{t}/partitions`: leader, replicas, log start and high watermark of
    /// each partition.
    ///
    /// # Errors
    ///
    /// `topic_not_found`, another server error, or [`Error::Transport`].
    pub async fn partitions(&self, topic: &str) -> Result<Vec<PartitionStatus>, Error> {
        let call = Call::get(format!("/v1/topics/{}/partitions", segment(topic)));
        self.client.json(&call, StatusCode::OK).await
    }

    /// `PATCH /v1/topics/{t}`: changes retention.
    ///
    /// # Errors
    ///
    /// `invalid_config` (nothing to change, a bad value), `topic_not_found`, …
    pub async fn alter_topic(&self, topic: &str, update: &TopicUpdate) -> Result<Topic, Error> {
        let call =
            Call::new(Method::PATCH, format!("/v1/topics/{}", segment(topic))).json(update)?;
        self.client.json(&call, StatusCode::OK).await
    }

    /// `DELETE /v1/topics/{t}`: the topic, its data and the groups' offsets for it.
    ///
    /// # Errors
    ///
    /// `topic_not_found`, another server error, or [`Error::Transport`].
    pub async fn delete_topic(&self, topic: &str) -> Result<(), Error> {
        let call = Call::new(Method::DELETE, format!("/v1/topics/{}", segment(topic)));
        self.client.empty(&call, StatusCode::NO_CONTENT).await
    }

    /// `GET /v1/groups`.
    ///
    /// # Errors
    ///
    /// The server's error or [`Error::Transport`].
    pub async fn list_groups(&self) -> Result<Vec<GroupSummary>, Error> {
        let call = Call::get("/v1/groups".into());
        self.client.json(&call, StatusCode::OK).await
    }

    /// `GET /v1/groups/{g}`: members and their partitions.
    ///
    /// # Errors
    ///
    /// The server's error or [`Error::Transport`].
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription, Error> {
        let call = Call::get(format!("/v1/groups/{}", segment(group)));
        self.client.json(&call, StatusCode::OK).await
    }

    /// `GET /v1/groups/{g}/offsets`: committed offsets and lag (linearizable).
    ///
    /// # Errors
    ///
    /// The server's error or [`Error::Transport`].
    pub async fn group_offsets(&self, group: &str) -> Result<GroupOffsets, Error> {
        let call = Call::get(format!("/v1/groups/{}/offsets", segment(group)));
        self.client.json(&call, StatusCode::OK).await
    }

    /// `PUT /v1/groups/{g}/offsets`: sets committed offsets of a group without members.
    ///
    /// # Errors
    ///
    /// `group_not_empty`, `offset_out_of_range`, `topic_not_found`, …
    pub async fn reset_group(
        &self,
        group: &str,
        reset: &ResetRequest,
    ) -> Result<ResetResponse, Error> {
        let call = Call::new(
            Method::PUT,
            format!("/v1/groups/{}/offsets", segment(group)),
        )
        .json(reset)?;
        self.client.json(&call, StatusCode::OK).await
    }

    /// `DELETE /v1/groups/{g}`: a group without members, with its committed offsets.
    ///
    /// # Errors
    ///
    /// `group_not_empty`, `group_not_found`, …
    pub async fn delete_group(&self, group: &str) -> Result<(), Error> {
        let call = Call::new(Method::DELETE, format!("/v1/groups/{}", segment(group)));
        self.client.empty(&call, StatusCode::NO_CONTENT).await
    }

    /// `PUT /v1/groups/{g}/push`: makes a group without members a push subscription (or
    /// changes its settings); answers it as stored.
    ///
    /// # Errors
    ///
    /// `invalid_request`, `topic_not_found`, `group_not_empty`, …
    pub async fn set_push(
        &self,
        group: &str,
        settings: &PushRequest,
    ) -> Result<PushSubscription, Error> {
        let call =
            Call::new(Method::PUT, format!("/v1/groups/{}/push", segment(group))).json(settings)?;
        self.client.json(&call, StatusCode::OK).await
    }

    /// `GET /v1/groups/{g}/push`: a push subscription's settings (never the secret) and
    /// per-partition state.
    ///
    /// # Errors
    ///
    /// `push_not_found`, …
    pub async fn push(&self, group: &str) -> Result<PushSubscription, Error> {
        let call = Call::get(format!("/v1/groups/{}/push", segment(group)));
        self.client.json(&call, StatusCode::OK).await
    }

    /// `DELETE /v1/groups/{g}/push`: ends a push subscription; its offsets stay.
    ///
    /// # Errors
    ///
    /// `push_not_found`, …
    pub async fn delete_push(&self, group: &str) -> Result<(), Error> {
        let call = Call::new(
            Method::DELETE,
            format!("/v1/groups/{}/push", segment(group)),
        );
        self.client.empty(&call, StatusCode::NO_CONTENT).await
    }

    /// `GET /v1/cluster`: nodes and partition placement as the answering node sees them.
    ///
    /// # Errors
    ///
    /// The server's error or [`Error::Transport`].
    pub async fn cluster(&self) -> Result<ClusterInfo, Error> {
        let call = Call::get("/v1/cluster".into());
        self.client.json(&call, StatusCode::OK).await
    }

    /// `PUT /v1/topics/{t}/partitions/{p}/replicas` (admin): starts moving a partition's
    /// replicas to `replicas` (the first is the preferred leader); answers the move started.
    ///
    /// # Errors
    ///
    /// `invalid_request`, `topic_not_found`, `partition_not_found`, `move_conflict` (a
    /// move of the partition runs), another server error, or [`Error::Transport`].
    pub async fn move_replicas(
        &self,
        topic: &str,
        partition: u32,
        replicas: Vec<u64>,
    ) -> Result<Reassignment, Error> {
        let path = format!(
            "/v1/topics/{}/partitions/{partition}/replicas",
            segment(topic)
        );
        let call = Call::new(Method::PUT, path).json(&MoveReplicas { replicas })?;
        self.client.json(&call, StatusCode::ACCEPTED).await
    }

    /// `GET /v1/reassignments`: the replica moves in progress.
    ///
    /// # Errors
    ///
    /// The server's error or [`Error::Transport`].
    pub async fn reassignments(&self) -> Result<Reassignments, Error> {
        let call = Call::get("/v1/reassignments".into());
        self.client.json(&call, StatusCode::OK).await
    }

    /// `POST /v1/cluster/nodes/{id}/decommission` (admin): moves every replica off the
    /// node, then removes it from the controller group.
    ///
    /// # Errors
    ///
    /// `invalid_request` (unknown node), `move_conflict` (already leaving, or the other
    /// nodes cannot hold a replication factor), another server error, or
    /// [`Error::Transport`].
    pub async fn decommission(&self, node: u64) -> Result<Decommission, Error> {
        let call = Call::new(
            Method::POST,
            format!("/v1/cluster/nodes/{node}/decommission"),
        );
        self.client.json(&call, StatusCode::ACCEPTED).await
    }
}
