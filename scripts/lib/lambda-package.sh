# shellcheck shell=bash
# The layout of a Lambda package the CDK stack deploys: a directory holding `bootstrap` and the
# pipeline config, named fanout.json (fanout.yaml for a YAML file, the loader picks the parser by
# extension). Sourced by scripts/package (cargo-lambda builds) and scripts/local-cloud (this
# machine's release binaries), so both lay packages out the same way.

# The config's name inside a package: fanout.yaml for .yaml/.yml, fanout.json otherwise.
packaged_config_name() {
  case "$1" in
    *.yaml|*.yml) echo fanout.yaml ;;
    *) echo fanout.json ;;
  esac
}

# place_config DIR CONFIG: copies CONFIG into package DIR under its packaged name, removing a
# config of the other kind left by an earlier package.
place_config() {
  local dir="$1" config="$2"
  rm -f "$dir/fanout.json" "$dir/fanout.yaml"
  cp "$config" "$dir/$(packaged_config_name "$config")"
}
