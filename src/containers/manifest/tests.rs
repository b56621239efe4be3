//! The manifest's unit tests: parsing of `/serfnode.yml` and `DOCKER_RUN`, with
//! the fixtures under `tests/fixtures/manifest/`.

use super::*;

fn parse(yaml: &str) -> Result<Manifest, String> {
    Manifest::parse(yaml, Path::new("/serfnode.yml")).map_err(|e| e.to_string())
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/manifest")
        .join(name)
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn child(name: &str, image: &str) -> ChildSpec {
    ChildSpec {
        name: name.into(),
        image: image.into(),
        ..ChildSpec::default()
    }
}

/// Each YAML text's error is the message, after the file's name.
fn assert_errors(cases: &[(&str, &str)]) {
    for (yaml, message) in cases {
        assert_eq!(
            parse(yaml),
            Err(format!("/serfnode.yml: {message}")),
            "{yaml}"
        );
    }
}

/// The one child of a `children:` list made of `settings` (indented by 6).
fn only_child(settings: &str) -> Result<ChildSpec, String> {
    let mut manifest = parse(&format!("children:\n  - web:\n{settings}"))?;
    Ok(manifest.children.remove(0))
}

#[test]
fn the_original_example_parses() {
    let manifest = Manifest::load(&fixture("original-serfnode.yml")).unwrap();
    assert_eq!(manifest, Some(Manifest::default()));
}

#[test]
fn the_original_example_parses_as_it_was_when_active() {
    let manifest = Manifest::load(&fixture("original-serfnode-82a498a.yml"))
        .unwrap()
        .unwrap();
    let sleep = Some(strings(&["sleep", "infinity"]));
    let expected = Manifest {
        serfnode: NodeSection {
            role: Some("foo".into()),
            ports: strings(&["8000:8000"]),
            ..NodeSection::default()
        },
        children: vec![
            ChildSpec {
                command: sleep.clone(),
                environment: env(&[("MY_VAR", "1")]),
                working_dir: Some("/tmp".into()),
                privileged: false,
                ..child("my_container", "ubuntu")
            },
            ChildSpec {
                command: sleep,
                ..child("other", "ubuntu")
            },
        ],
        handlers: None,
        templates: vec![],
    };
    assert_eq!(manifest, expected);
}

#[test]
fn every_key_and_form_parses() {
    let manifest = Manifest::load(&fixture("all-forms.yml")).unwrap().unwrap();
    let expected = Manifest {
        serfnode: NodeSection {
            role: Some("web".into()),
            peer: strings(&["10.0.0.5:7946", "10.0.0.6", "10.0.0.7"]),
            serf_ip: Some("10.0.0.8".parse().unwrap()),
            serf_port: Some(7947),
            service_ip: Some("10.0.0.9".parse().unwrap()),
            service_port: Some(8080),
            environment: env(&[("SHARED", "from the section"), ("LEVEL", "section")]),
            volumes: strings(&["/logs:/var/log", "/cache"]),
            volumes_from: strings(&["data-volume:ro"]),
            ports: strings(&["8000:8000", "9000"]),
        },
        children: vec![
            ChildSpec {
                command: Some(strings(&["postgres", "-c", "max_connections=50"])),
                entrypoint: Some(strings(&["docker-entrypoint.sh"])),
                environment: env(&[("LEVEL", "child"), ("PORT", "5432"), ("RATIO", "0.5")]),
                volumes: strings(&["/srv/db:/var/lib/postgresql/data", "/mylogs:/var/log"]),
                working_dir: Some("/var/lib/postgresql".into()),
                user: Some("999".into()),
                privileged: true,
                expose: strings(&["5432"]),
                ..child("db", "postgres:16")
            },
            ChildSpec {
                command: Some(strings(&["sh", "-c", "exec nginx -g \"daemon off;\""])),
                entrypoint: Some(vec![]),
                environment: env(&[("A", "1"), ("B", "x=y"), ("EMPTY", "")]),
                volumes_from: strings(&["db", "data-volume"]),
                links: strings(&["db:database"]),
                ports: strings(&["80:80"]),
                ..child("web.1", "registry.local:5000/web:1.2")
            },
        ],
        handlers: Some("/handlers".into()),
        templates: vec![],
    };
    assert_eq!(manifest, expected);
}

#[test]
fn a_command_is_a_list_or_a_string_split_as_a_shell_would() {
    let words = Some(strings(&["sh", "-c", "echo 'a b' $HOME"]));
    let as_list = only_child("      image: x\n      command: [sh, -c, \"echo 'a b' $HOME\"]\n");
    let as_string = only_child("      image: x\n      command: sh -c \"echo 'a b' \\$HOME\"\n");
    assert_eq!(as_list.unwrap().command, words);
    assert_eq!(as_string.unwrap().command, words);
    let numbers = only_child("      image: x\n      entrypoint: [sleep, 10]\n").unwrap();
    assert_eq!(numbers.entrypoint, Some(strings(&["sleep", "10"])));
    let unset = only_child("      image: x\n      command: ~\n").unwrap();
    assert_eq!(unset.command, None);
}

#[test]
fn environment_is_a_mapping_or_a_list() {
    let expected = env(&[("A", "1"), ("B", "two words"), ("C", "true")]);
    let mapping = only_child("      image: x\n      environment: {A: 1, B: two words, C: true}\n");
    let list = only_child("      image: x\n      environment: [A=1, B=two words, C=true]\n");
    assert_eq!(mapping.unwrap().environment, expected);
    assert_eq!(list.unwrap().environment, expected);
}

#[test]
fn peer_is_a_string_or_a_list() {
    let expected = strings(&["a:7946", "b", "[::1]:7946"]);
    for yaml in [
        "serfnode:\n  peer: a:7946,b [::1]:7946\n",
        "serfnode:\n  peer: 'a:7946 , b,  [::1]:7946'\n",
        "serfnode:\n  peer: [a:7946, b, '[::1]:7946']\n",
        "serfnode:\n  peer:\n    - a:7946\n    - b, [::1]:7946\n",
    ] {
        assert_eq!(parse(yaml).unwrap().serfnode.peer, expected, "{yaml}");
    }
}

#[test]
fn empty_documents_and_sections_mean_nothing_set() {
    for yaml in [
        "",
        "# nothing\n",
        "---\n",
        "serfnode:\nchildren:\nhandlers:\n",
    ] {
        assert_eq!(parse(yaml), Ok(Manifest::default()), "{yaml:?}");
    }
}

#[test]
fn privileged_takes_yaml_1_1_booleans_as_pyyaml_did() {
    for (value, expected) in [
        ("yes", true),
        ("On", true),
        ("true", true),
        ("NO", false),
        ("off", false),
    ] {
        let spec = only_child(&format!("      image: x\n      privileged: {value}\n")).unwrap();
        assert_eq!(spec.privileged, expected, "{value}");
    }
}

#[test]
fn volumes_from_may_name_an_earlier_sibling_or_any_other_container() {
    let manifest = parse(
        "children:\n  - db:\n      image: x\n  - web:\n      image: y\n      volumes_from: [db:ro, elsewhere]\n",
    )
    .unwrap();
    assert_eq!(
        manifest.children[1].volumes_from,
        strings(&["db:ro", "elsewhere"])
    );
}

#[test]
fn load_of_a_missing_file_is_none() {
    assert!(Manifest::load(&fixture("absent.yml")).unwrap().is_none());
}

#[test]
fn load_of_an_unreadable_file_says_which() {
    // What Docker leaves when it bind-mounts a missing host file: a directory.
    let dir = fixture("");
    let err = Manifest::load(&dir).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "cannot read {}: Is a directory (os error 21)",
            dir.display()
        )
    );
}

#[test]
fn errors_in_a_file_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("serfnode.yml");
    std::fs::write(
        &path,
        "children:\n  - web:\n      image: x\n      volume: [/a:/b]\n",
    )
    .unwrap();
    let err = Manifest::load(&path).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}: children[0].web: unknown field `volume`, expected one of `image`, `command`, `entrypoint`, `environment`, `volumes`, `volumes_from`, `working_dir`, `user`, `privileged`, `links`, `expose`, `ports`, `handlers`, `allow`, `show_secrets`, `templates` at line 4 column 7",
            path.display()
        )
    );
}

#[test]
fn errors_name_the_key_path_and_line() {
    let cases = [
        // Wrong types and values.
        (
            "children:\n  - db:\n      image: x\n  - web:\n      image: y\n\n      privileged: maybe\n",
            "children[1].web.privileged: invalid value: string \"maybe\", expected a boolean (true/false, yes/no, on/off) at line 7 column 19",
        ),
        (
            "serfnode:\n  serf_port: 99999\n",
            "serfnode.serf_port: invalid value: integer `99999`, expected u16 at line 2 column 14",
        ),
        (
            "serfnode:\n  service_ip: 10.0.0\n",
            "serfnode.service_ip: invalid IP address syntax at line 2 column 15",
        ),
        (
            "serfnode:\n  peer: {a: b}\n",
            "serfnode.peer: invalid type: map, expected an address or a list of addresses at line 2 column 9",
        ),
        (
            "serfnode:\n  volumes: /a:/b\n",
            "serfnode.volumes: invalid type: string \"/a:/b\", expected a sequence at line 2 column 12",
        ),
        (
            "children:\n  - web:\n      image: x\n      command: \"sh -c 'x\"\n",
            "children[0].web.command: cannot split \"sh -c 'x\" into words: missing closing quote at line 4 column 16",
        ),
        (
            "children:\n  - web:\n      image: x\n      environment: [A=1, B]\n",
            "children[0].web.environment: `B` is not NAME=value at line 4 column 20",
        ),
        (
            "children:\n  - web:\n      image: x\n      environment: [A=1, A=2]\n",
            "children[0].web.environment: variable `A` is set twice at line 4 column 20",
        ),
        (
            "children:\n  - web:\n      image: x\n      environment:\n        A:\n",
            "children[0].web.environment.A: invalid type: null, expected a string or a number at line 5 column 11",
        ),
        (
            "children: web\n",
            "children: invalid type: string \"web\", expected a list of `- name: {image: ...}` entries at line 1 column 11",
        ),
        (
            "[serfnode]\n",
            "invalid type: sequence, expected a mapping with serfnode, children, handlers and templates at line 1 column 1",
        ),
        // Unknown and repeated keys.
        (
            "chidren: []\n",
            "unknown field `chidren`, expected one of `serfnode`, `children`, `handlers`, `templates` at line 1 column 1",
        ),
        (
            "serfnode:\n  PEER: localhost\n",
            "serfnode: unknown field `PEER`, expected one of `role`, `peer`, `serf_ip`, `serf_port`, `service_ip`, `service_port`, `environment`, `volumes`, `volumes_from`, `ports` at line 2 column 3",
        ),
        (
            "children:\n  - web:\n      image: x\n      image: y\n",
            "children[0].web: duplicate field `image` at line 3 column 7",
        ),
        // Children.
        (
            "children:\n  - web:\n      command: sleep\n",
            "children[0].web: missing field `image` at line 3 column 7",
        ),
        (
            "children:\n  - web:\n      image: ''\n",
            "children[0].web.image: invalid value: string \"\", expected an image reference at line 3 column 14",
        ),
        (
            "children:\n  - web:\n      image: debian bookworm\n",
            "children[0].web.image: invalid value: string \"debian bookworm\", expected an image reference at line 3 column 14",
        ),
        (
            "children:\n  - web:\n  - db:\n      image: x\n",
            "children[0]: child `web` has no settings: it needs an image at line 2 column 5",
        ),
        (
            "children:\n  - web:\n    image: x\n",
            "children[0]: the entry of child `web` has a second key `image` (indent a child's settings under its name) at line 2 column 5",
        ),
        (
            "children:\n  - {}\n",
            "children[0]: empty child entry: write `- name: {image: ...}` at line 2 column 5",
        ),
        (
            "children:\n  - web\n",
            "children[0]: invalid type: string \"web\", expected a child: `- name: {image: ...}` at line 2 column 5",
        ),
        (
            "children:\n  - db:\n      image: x\n  - _db:\n      image: y\n",
            "children[1]: invalid child name `_db`: a container name is a letter or digit, then letters, digits, `_`, `.` or `-` at line 4 column 5",
        ),
        (
            "children:\n  - db:\n      image: x\n  - db:\n      image: y\n",
            "children[1]: duplicate child name `db` at line 4 column 5",
        ),
        (
            "children:\n  - db:\n      image: x\n  - web:\n      image: y\n      volumes_from: [db, cache:ro]\n  - cache:\n      image: z\n",
            "children[1]: child `web` takes volumes_from `cache`, which is listed after it (children start in list order) at line 4 column 5",
        ),
        (
            "children:\n  - web:\n      image: x\n      volumes_from: [web]\n",
            "children[0]: child `web` takes volumes_from itself at line 2 column 5",
        ),
        // Not YAML.
        (
            "children:\n  - web:\n      image: x\n  -db:\n",
            "did not find expected '-' indicator at line 4 column 3, while parsing a block collection at line 2 column 3",
        ),
    ];
    assert_errors(&cases);
}

#[test]
fn the_sections_volumes_from_cannot_name_a_child() {
    let yaml = "serfnode:\n  volumes_from: [db:ro]\nchildren:\n  - db:\n      image: x\n";
    assert_eq!(
        parse(yaml),
        Err("/serfnode.yml: serfnode.volumes_from: `db` is a child, and this list goes into every child: `db` cannot take volumes from itself or from a child started after it".into())
    );
}

#[test]
fn effective_children_take_the_sections_settings_the_child_winning() {
    let manifest = Manifest {
        serfnode: NodeSection {
            environment: env(&[("A", "section"), ("B", "section")]),
            volumes: strings(&["/logs:/var/log", "/cache", "/etc/x:/etc/x:ro"]),
            volumes_from: strings(&["data", "shared:ro"]),
            ports: strings(&["8000:8000"]),
            ..NodeSection::default()
        },
        children: vec![
            ChildSpec {
                environment: env(&[("B", "child"), ("C", "child")]),
                volumes: strings(&["/mine:/var/log", "/own", "/own"]),
                volumes_from: strings(&["shared:rw"]),
                ..child("first", "x")
            },
            child("second", "y"),
        ],
        handlers: None,
        templates: vec![],
    };
    let merged = manifest.effective_children();
    assert_eq!(
        merged,
        vec![
            ChildSpec {
                environment: env(&[("A", "section"), ("B", "child"), ("C", "child")]),
                volumes: strings(&["/mine:/var/log", "/own", "/cache", "/etc/x:/etc/x:ro"]),
                volumes_from: strings(&["shared:rw", "data"]),
                ..child("first", "x")
            },
            ChildSpec {
                environment: env(&[("A", "section"), ("B", "section")]),
                volumes: strings(&["/logs:/var/log", "/cache", "/etc/x:/etc/x:ro"]),
                volumes_from: strings(&["data", "shared:ro"]),
                ..child("second", "y")
            },
        ]
    );
}

#[test]
fn docker_run_reads_every_supported_flag() {
    let spec = parse_docker_run(
        "-e A=1 -v /x:/y --volumes-from other -w /app --entrypoint sh -u 1000 --privileged \
         --name web --link db:db --expose 80 -p 8080:80 debian:bookworm sleep infinity",
        None,
    )
    .unwrap();
    let expected = ChildSpec {
        command: Some(strings(&["sleep", "infinity"])),
        entrypoint: Some(strings(&["sh"])),
        environment: env(&[("A", "1")]),
        volumes: strings(&["/x:/y"]),
        volumes_from: strings(&["other"]),
        working_dir: Some("/app".into()),
        user: Some("1000".into()),
        privileged: true,
        links: strings(&["db:db"]),
        expose: strings(&["80"]),
        ports: strings(&["8080:80"]),
        ..child("web", "debian:bookworm")
    };
    assert_eq!(spec, expected);
    let long_forms_with_equals = parse_docker_run(
        "--env=A=1 --volume=/x:/y --volumes-from=other --workdir=/app --entrypoint=sh \
         --user=1000 --privileged=true --name=web --link=db:db --expose=80 --publish=8080:80 \
         debian:bookworm sleep infinity",
        None,
    );
    assert_eq!(long_forms_with_equals.unwrap(), expected);
}

#[test]
fn docker_run_keeps_the_command_as_given() {
    let spec = parse_docker_run(
        "--name app --entrypoint '' busybox sh -c 'echo \"$A\" --name x' -e B=2",
        Some("from-env"),
    )
    .unwrap();
    let expected = ChildSpec {
        command: Some(strings(&["sh", "-c", "echo \"$A\" --name x", "-e", "B=2"])),
        entrypoint: Some(vec![]),
        ..child("from-env", "busybox")
    };
    assert_eq!(spec, expected);
    let bare = parse_docker_run("--privileged=false busybox", Some("b")).unwrap();
    assert_eq!(bare, child("b", "busybox"));
}

#[test]
fn docker_run_errors_name_what_failed() {
    let cases = [
        ("-d --name web busybox", None, "unsupported flag `-d` (supported: -e/--env, -v/--volume, --volumes-from, -w/--workdir, --entrypoint, -u/--user, --privileged, --name, --link, --expose, -p/--publish)"),
        ("--rm=true busybox", Some("web"), "unsupported flag `--rm` (supported: -e/--env, -v/--volume, --volumes-from, -w/--workdir, --entrypoint, -u/--user, --privileged, --name, --link, --expose, -p/--publish)"),
        ("--name web -e", None, "flag `-e` needs a value"),
        ("--name web -e A busybox", None, "`A` is not NAME=value"),
        ("--privileged=yes busybox", Some("web"), "`--privileged=yes` is not true or false"),
        ("--name web", None, "no image"),
        ("", Some("web"), "no image"),
        ("--name web '' true", None, "invalid image \"\""),
        ("busybox true", None, "no child name: give --name or set DOCKER_NAME"),
        ("--name -web busybox", None, "invalid child name `-web`: a container name is a letter or digit, then letters, digits, `_`, `.` or `-`"),
        ("--name web busybox", Some("a b"), "invalid child name `a b`: a container name is a letter or digit, then letters, digits, `_`, `.` or `-`"),
        ("--name web busybox sh -c 'x", None, "cannot split into words: missing closing quote"),
    ];
    for (args, name, message) in cases {
        let err = parse_docker_run(args, name).unwrap_err().to_string();
        assert_eq!(err, format!("invalid DOCKER_RUN: {message}"), "{args}");
    }
}

#[test]
fn allow_lists_parse_and_bad_patterns_name_the_key() {
    let c = only_child("      image: x\n      allow: {events: [deploy, \"app-*\"], queries: []}\n")
        .unwrap();
    assert!(c.allow.event("deploy") && c.allow.event("app-1") && !c.allow.event("other"));
    assert!(!c.allow.query("where"));
    assert_eq!(
        only_child("      image: x\n").unwrap().allow,
        Default::default()
    );
    let err = only_child("      image: x\n      allow: {events: [\"a/b\"]}\n").unwrap_err();
    assert!(err.contains("allow") && err.contains("a/b"), "{err}");
    let err = only_child("      image: x\n      allow: {event: [a]}\n").unwrap_err();
    assert!(err.contains("unknown field `event`"), "{err}");
}

#[test]
fn templates_parse_at_the_top_and_under_a_child() {
    let yaml = "\
templates:
  - name: upstreams
    source: /etc/serfnode/templates/upstreams.conf.j2
    destination: /etc/nginx/conf.d/upstreams.conf
    command: nginx -s reload
    wait: 1s:5s
children:
  - web:
      image: x
      templates:
        - name: app.env
          template: |
            PEERS={{ alive | map(attribute='id') | join(',') }}
          signal: HUP
";
    let manifest = parse(yaml).unwrap();
    assert_eq!(manifest.templates.len(), 1);
    assert_eq!(manifest.templates[0].name, "upstreams");
    let child = &manifest.children[0].templates[0];
    assert_eq!(child.signal.map(|s| s.name()), Some("HUP"));
    let crate::surface::templates::Body::Inline { text, placement } = &child.body else {
        panic!("{child:?}")
    };
    assert_eq!(
        text,
        "PEERS={{ alive | map(attribute='id') | join(',') }}\n"
    );
    let placement = placement.as_ref().unwrap();
    assert_eq!(
        (placement.line, placement.column, placement.exact),
        (13, 13, true)
    );
    assert_eq!(placement.key, "children[0].web.templates[0].template");
    // They go with the child into its effective settings.
    assert_eq!(
        manifest.effective_children()[0].templates,
        manifest.children[0].templates
    );
}

#[test]
fn template_errors_name_the_key_path_and_line() {
    let cases = [
        (
            "templates:\n  - name: a\n    template: x\n    signal: HUP\n",
            "templates[0]: template `a`: `signal` is for a child's templates (it goes to the child's application); the node's run a `command` at line 2 column 5",
        ),
        (
            "children:\n  - web:\n      image: x\n      templates:\n        - name: a\n          source: rel.j2\n",
            "children[0].web.templates[0].source: invalid value: string \"rel.j2\", expected an absolute path to a file at line 6 column 19",
        ),
        (
            "templates:\n  - name: a\n    template: x\n  - name: a\n    source: /a\n",
            "templates[1]: duplicate template name `a` at line 4 column 5",
        ),
    ];
    assert_errors(&cases);
}

#[test]
fn an_inline_template_that_does_not_parse_is_an_error_at_its_manifest_line() {
    let cases = [
        // A literal block: the template's line 2 is the manifest's line 6.
        (
            "serfnode:\n  role: web\ntemplates:\n  - name: a\n    template: |\n      upstream {\n      {% for m in alive %}\n",
            "templates[0].template: syntax error: unexpected end of input, expected end of block at line 7 column 25",
        ),
        (
            "templates:\n  - name: a\n    template: |\n      x {{ y }\n",
            "templates[0].template: syntax error: unexpected `}`, expected end of variable block at line 4 column 14",
        ),
        // One line, plain or quoted.
        (
            "templates:\n  - name: a\n    template: a {{ b c }}\n",
            "templates[0].template: syntax error: unexpected identifier, expected end of variable block at line 3 column 22",
        ),
        (
            "templates:\n  - {name: a, template: \"{{ 1 + }}\"}\n",
            "templates[0].template: syntax error: unexpected end of variable block at line 2 column 33",
        ),
        // Folded: the template's own line, after where it starts.
        (
            "templates:\n  - name: a\n    template: >\n      {{ a\n      b c }}\n",
            "templates[0].template: syntax error: unexpected identifier, expected end of variable block at line 1 column 6 of the template, which starts at line 3 column 15",
        ),
        (
            "children:\n  - db:\n      image: x\n  - web:\n      image: x\n      templates:\n        - name: a\n          template: |\n            ok\n            {% if %}\n",
            "children[1].web.templates[0].template: syntax error: unexpected end of block at line 10 column 19",
        ),
    ];
    assert_errors(&cases);
}
