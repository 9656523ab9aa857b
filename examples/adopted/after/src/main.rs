use signups::{BoxError, Config};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let config = Config {
        database_url: env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/signups"),
        brokers: env("KAFKA_BROKERS", "127.0.0.1:9092"),
        topic: env("SIGNUPS_TOPIC", "signup-created"),
        group: env("SIGNUPS_GROUP", "signups"),
    };
    let listener = tokio::net::TcpListener::bind(env("LISTEN", "127.0.0.1:8080")).await?;
    let _service = signups::start(&config, listener).await?;
    tokio::signal::ctrl_c().await?;
    Ok(())
}
