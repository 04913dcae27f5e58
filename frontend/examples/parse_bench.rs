//! Times the frontends on generated inputs: a 2,000-line Dockerfile and a forge.toml
//! with 200 images. Run through `bench/parse.sh` (release build). Prints medians.

use std::time::{Duration, Instant};

use forge_frontend::lower::{lower_dockerfile, lower_project, LowerOptions};
use forge_frontend::syntax::SourceFile;
use forge_frontend::{dockerfile, forge_toml};

/// A Dockerfile of about `lines` lines in 10 stages, exercising every common form.
fn dockerfile(lines: usize) -> String {
    let mut s = String::from("# syntax=docker/dockerfile:1\nARG BASE=busybox:1.36\n");
    let mut stage = 0;
    while s.lines().count() < lines {
        if s.lines().count() >= stage * lines / 10 {
            s.push_str(&format!(
                "\nFROM ${{BASE}} AS stage{stage}\nARG VERSION=1.{stage}\n"
            ));
            stage += 1;
        }
        let n = s.lines().count();
        s.push_str(&format!(
            "ENV APP_HOME=/opt/app{n} PATH=/opt/app{n}/bin:$PATH\n\
             WORKDIR $APP_HOME\n\
             COPY --chown=1000:1000 src/{n}/ ./src/\n\
             RUN set -eux; \\\n    echo building {n} version $VERSION \\\n    && mkdir -p /out/{n} \\\n    && touch /out/{n}/done\n\
             RUN --mount=type=cache,target=/root/.cache [\"/bin/sh\", \"-c\", \"echo {n}\"]\n\
             LABEL org.example.step{n}=\"value {n}\" other=x\n\
             COPY <<EOF /etc/conf{n}\nkey={n}\nhome=$APP_HOME\nEOF\n\
             EXPOSE {p}/tcp\n",
            p = 1000 + n % 60000
        ));
    }
    s.push_str("CMD [\"/bin/sh\"]\n");
    s
}

/// A forge.toml with `images` images, a quarter of them depending on another.
fn forge_toml(images: usize) -> String {
    let mut s = String::from("version = 1\n");
    for i in 0..images {
        let from = if i % 4 == 0 || i == 0 {
            "scratch".to_string()
        } else {
            format!("img{}", i - i % 4)
        };
        s.push_str(&format!(
            "\n[image.img{i}]\nfrom = \"{from}\"\ntags = [\"example/img{i}:latest\"]\n\
             context = \"ctx/{i}\"\nargs = {{ VERSION = \"{i}\" }}\nenv = {{ HOME = \"/home/{i}\" }}\n\
             workdir = \"/app\"\nsteps = [\n  {{ copy = [\"src/\", \"/app/src/\"] }},\n  \
             {{ run = \"make -j2 VERSION=$VERSION\" }},\n  {{ env = {{ READY = \"1\" }} }},\n]\n\
             cmd = [\"/app/bin/img{i}\"]\n"
        ));
    }
    s.push_str("\n[group.default]\nimages = [");
    for i in 0..images {
        s.push_str(&format!("\"img{i}\", "));
    }
    s.push_str("]\n");
    s
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    let mut v = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        std::hint::black_box(f());
        v.push(t.elapsed());
    }
    median(v)
}

fn main() {
    let runs = 51;
    let text = dockerfile(2000);
    let lines = text.lines().count();
    let source = SourceFile::new("Dockerfile", text);
    let parse = time(runs, || dockerfile::parse(&source).map(|f| f.stages.len()));
    let Ok(parsed) = dockerfile::parse(&source) else {
        eprintln!("generated Dockerfile does not parse");
        std::process::exit(1);
    };
    let opts = LowerOptions::unresolved();
    let lower = time(runs, || {
        lower_dockerfile(&parsed, &opts).map(|ir| ir.stages.len())
    });
    let per_100 = parse.as_secs_f64() * 1e6 / (lines as f64 / 100.0);
    println!("Dockerfile: {lines} lines, parse {parse:?} (median of {runs}), {per_100:.1} µs per 100 lines; lower {lower:?}");

    let toml_text = forge_toml(200);
    let toml_lines = toml_text.lines().count();
    let toml_source = SourceFile::new("forge.toml", toml_text);
    let mut read = |_: &std::path::Path| Ok(String::new());
    let parse_toml = time(runs, || {
        forge_toml::parse(&toml_source, std::path::Path::new("."), &mut read)
            .map(|p| p.images.len())
    });
    let Ok(project) = forge_toml::parse(&toml_source, std::path::Path::new("."), &mut read) else {
        eprintln!("generated forge.toml does not parse");
        std::process::exit(1);
    };
    let lower_toml = time(runs, || {
        lower_project(&project, &opts).map(|ir| ir.stages.len())
    });
    println!(
        "forge.toml: 200 images, {toml_lines} lines, parse {parse_toml:?}, lower {lower_toml:?}"
    );
}
