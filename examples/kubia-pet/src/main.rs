//! kubia-pet, as in *Kubernetes in Action*: an HTTP server on port 8080.
//! `GET` answers `You've hit <hostname>` and the data stored on the pod's
//! volume; `POST` stores the request body in `/var/data/kubia.txt`.
//!
//! It listens on `$POD_IP:8080` (every address when `POD_IP` is not set);
//! `LISTEN` and `DATA_FILE` override the address and the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::get;

struct Pet {
    hostname: String,
    data_file: PathBuf,
}

fn hostname() -> String {
    let uname = rustix::system::uname();
    let name = uname.nodename().to_string_lossy().into_owned();
    if name.is_empty() {
        std::env::var("HOSTNAME").unwrap_or_default()
    } else {
        name
    }
}

async fn read(State(pet): State<Arc<Pet>>) -> String {
    let data = tokio::fs::read_to_string(&pet.data_file)
        .await
        .unwrap_or_else(|_| "No data posted yet".into());
    format!(
        "You've hit {}\nData stored on this pod: {}\n",
        pet.hostname,
        data.trim_end()
    )
}

async fn store(
    State(pet): State<Arc<Pet>>,
    body: Bytes,
) -> Result<String, (axum::http::StatusCode, String)> {
    if let Some(dir) = pet.data_file.parent() {
        let _ = tokio::fs::create_dir_all(dir).await;
    }
    tokio::fs::write(&pet.data_file, &body).await.map_err(|e| {
        (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot store data in {}: {e}\n", pet.data_file.display()),
        )
    })?;
    println!("New data has been received and stored.");
    Ok(format!("Data stored on pod {}\n", pet.hostname))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listen: SocketAddr = match std::env::var("LISTEN") {
        Ok(addr) => addr
            .parse()
            .map_err(|e| std::io::Error::other(format!("LISTEN={addr:?}: {e}")))?,
        Err(_) => format!(
            "{}:8080",
            std::env::var("POD_IP").unwrap_or_else(|_| "0.0.0.0".into())
        )
        .parse()
        .map_err(|e| std::io::Error::other(format!("POD_IP: {e}")))?,
    };
    let pet = Arc::new(Pet {
        hostname: hostname(),
        data_file: std::env::var("DATA_FILE")
            .unwrap_or_else(|_| "/var/data/kubia.txt".into())
            .into(),
    });
    println!("Kubia server starting on {listen} as {}...", pet.hostname);
    let app = Router::new()
        .route("/", get(read).post(store))
        .fallback(get(read).post(store))
        .with_state(pet);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await
}
