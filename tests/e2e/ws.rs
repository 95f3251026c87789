//! A WebSocket subscriber speaking Pusher protocol 7.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::{KEY, SECRET, oracle};

/// Bound on waiting for a protocol reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection to Sockudo.
pub struct Subscriber {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub socket_id: String,
}

/// A delivered event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event: String,
    pub channel: String,
    pub data: String,
}

impl Subscriber {
    /// Connects and reads `pusher:connection_established`.
    pub async fn connect(port: u16) -> Self {
        let url = format!("ws://127.0.0.1:{port}/app/{KEY}?protocol=7&client=e2e&version=1.0");
        let (ws, _) = tokio::time::timeout(REPLY_TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect within the timeout")
            .expect("websocket handshake");
        let mut sub = Self {
            ws,
            socket_id: String::new(),
        };
        let established = sub
            .next_message(REPLY_TIMEOUT)
            .await
            .expect("connection_established");
        assert_eq!(
            established["event"], "pusher:connection_established",
            "{established}"
        );
        let data: Value = serde_json::from_str(established["data"].as_str().expect("data string"))
            .expect("data is JSON text");
        sub.socket_id = data["socket_id"].as_str().expect("socket_id").to_owned();
        sub
    }

    async fn send(&mut self, message: Value) {
        self.ws
            .send(Message::Text(message.to_string().into()))
            .await
            .expect("send");
    }

    /// The next JSON message, or `None` after `wait`.
    async fn next_message(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match msg.expect("websocket message") {
                Message::Text(t) => return Some(serde_json::from_str(&t).expect("JSON message")),
                Message::Close(frame) => panic!("closed by the server: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// Subscribes; `user_id` makes it a presence member. Waits for
    /// `pusher_internal:subscription_succeeded`.
    pub async fn subscribe(&mut self, channel: &str, user_id: Option<&str>) {
        let mut data = json!({ "channel": channel });
        let channel_data = user_id.map(|id| json!({ "user_id": id, "user_info": {} }).to_string());
        if channel.starts_with("private-") || channel.starts_with("presence-") {
            let mut to_sign = format!("{}:{channel}", self.socket_id);
            if let Some(cd) = &channel_data {
                to_sign.push(':');
                to_sign.push_str(cd);
                data["channel_data"] = cd.clone().into();
            }
            data["auth"] = format!("{KEY}:{}", oracle::hmac_hex(SECRET, &to_sign)).into();
        }
        self.send(json!({ "event": "pusher:subscribe", "data": data }))
            .await;
        loop {
            let msg = self
                .next_message(REPLY_TIMEOUT)
                .await
                .unwrap_or_else(|| panic!("no subscription_succeeded for {channel}"));
            match msg["event"].as_str() {
                Some("pusher_internal:subscription_succeeded") if msg["channel"] == channel => {
                    return;
                }
                Some("pusher:error" | "pusher:subscription_error") => {
                    panic!("subscribe to {channel} failed: {msg}")
                }
                _ => continue,
            }
        }
    }

    /// Unsubscribes (the protocol sends no reply).
    pub async fn unsubscribe(&mut self, channel: &str) {
        self.send(json!({ "event": "pusher:unsubscribe", "data": { "channel": channel } }))
            .await;
    }

    /// The next application event (not `pusher:` or `pusher_internal:`),
    /// or `None` after `wait`.
    pub async fn next_event(&mut self, wait: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let msg = self.next_message(left).await?;
            let event = msg["event"].as_str().unwrap_or_default();
            if event.starts_with("pusher:") || event.starts_with("pusher_internal:") {
                continue;
            }
            return Some(Event {
                event: event.to_owned(),
                channel: msg["channel"].as_str().unwrap_or_default().to_owned(),
                data: msg["data"].as_str().expect("data is a string").to_owned(),
            });
        }
    }
}
