//! `DOCKER_RUN`: one more child from a `docker run` argument string.

use super::{check_name, split_variable, valid_image, ChildSpec, ManifestError};

const SUPPORTED: &str = "-e/--env, -v/--volume, --volumes-from, -w/--workdir, --entrypoint, \
                         -u/--user, --privileged, --name, --link, --expose, -p/--publish";

/// The child described by `args`, the arguments of `docker run` (flags,
/// image, command), split as a shell would. Flags take their value as
/// `--flag value` or `--flag=value`; any other flag than those supported is
/// an error. `name` (`DOCKER_NAME`) wins over `--name`; one of them is needed.
pub(crate) fn parse_docker_run(args: &str, name: Option<&str>) -> Result<ChildSpec, ManifestError> {
    parse(args, name).map_err(ManifestError::DockerRun)
}

fn parse(args: &str, name: Option<&str>) -> Result<ChildSpec, String> {
    let mut words = shell_words::split(args)
        .map_err(|e| format!("cannot split into words: {e}"))?
        .into_iter();
    let mut child = ChildSpec::default();
    let mut flag_name = None;
    let image = loop {
        let word = words.next().ok_or("no image")?;
        if !word.starts_with('-') {
            break word;
        }
        let (flag, mut inline) = match word.split_once('=') {
            Some((flag, value)) => (flag, Some(value.to_owned())),
            None => (word.as_str(), None),
        };
        if flag == "--privileged" {
            child.privileged = match inline.as_deref() {
                None | Some("true") => true,
                Some("false") => false,
                Some(other) => return Err(format!("`--privileged={other}` is not true or false")),
            };
            continue;
        }
        let mut value = || {
            inline
                .take()
                .or_else(|| words.next())
                .ok_or_else(|| format!("flag `{flag}` needs a value"))
        };
        match flag {
            "-e" | "--env" => {
                let (name, value) = split_variable(&value()?)?;
                child.environment.insert(name, value);
            }
            "-v" | "--volume" => child.volumes.push(value()?),
            "--volumes-from" => child.volumes_from.push(value()?),
            "-w" | "--workdir" => child.working_dir = Some(value()?),
            "--entrypoint" => {
                let entrypoint = value()?;
                child.entrypoint = Some(if entrypoint.is_empty() {
                    vec![]
                } else {
                    vec![entrypoint]
                });
            }
            "-u" | "--user" => child.user = Some(value()?),
            "--name" => flag_name = Some(value()?),
            "--link" => child.links.push(value()?),
            "--expose" => child.expose.push(value()?),
            "-p" | "--publish" => child.ports.push(value()?),
            _ => {
                return Err(format!(
                    "unsupported flag `{flag}` (supported: {SUPPORTED})"
                ))
            }
        }
    };
    if !valid_image(&image) {
        return Err(format!("invalid image {image:?}"));
    }
    child.name = name
        .map(str::to_owned)
        .or(flag_name)
        .ok_or("no child name: give --name or set DOCKER_NAME")?;
    check_name(&child.name)?;
    child.image = image;
    let command: Vec<String> = words.collect();
    child.command = (!command.is_empty()).then_some(command);
    Ok(child)
}
