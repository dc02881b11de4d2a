"""Read manifest files and directories into validated, normalised Stacks.

The pipeline, for every YAML document of every file:
1. find the files (`discovery`) and parse them keeping the position of every key and value
   (`yamlpos`);
2. recognise each document (`document.envelope`): a `pyapply/v1` `Stack`, or a plain compose
   file (top-level `services`); compose files form projects, assembled by `compose`;
3. interpolate `${VAR}` in string values from the environment over the `.env` file beside
   the manifest (`interpolate`), then turn strings into numbers and booleans where compose
   would (so `replicas: ${N:-2}` works) (`document.Context.prepare`);
4. validate against the JSON Schema (schemas/v1), every error in words (`schema`);
5. normalise the compose-shaped spec into `model` value types (`stack`, `service`, with the
   value syntax of `values`), checking what a schema cannot say (port syntax, undeclared
   names, dependency cycles, host port clashes ...).

Nothing stops at the first mistake: `load` gathers every problem, each with file, line,
column and JSON path, and raises `ManifestError` when any of them is an error. It only reads
files; it never touches a container runtime.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import msgspec

from pyapply.reconciler.core import identity
from pyapply.reconciler.core.model import Location, ManifestError, Problem, Stack
from pyapply.reconciler.manifest import compose, sealed, yamlpos
from pyapply.reconciler.manifest.discovery import (
    Source,
    Unreadable,
    content_digest,
    discover,
    is_compose,
    read_file,
    read_text,
    self_contained,
)
from pyapply.reconciler.manifest.document import (
    API_VERSION,
    KIND,
    Context,
    FileAccess,
    FileGuard,
    Session,
    StackDocument,
    envelope,
    format_path,
    problem_order,
)
from pyapply.reconciler.manifest.interpolate import InterpolationError, interpolate, parse_dotenv
from pyapply.reconciler.manifest.schema import explain, schema
from pyapply.reconciler.manifest.stack import (
    StackDraft,
    check_container_names,
    check_duplicates,
    check_host_ports,
    stack_name,
)

__all__ = [
    "API_VERSION",
    "KIND",
    "FileAccess",
    "FileGuard",
    "Loaded",
    "StackDocument",
    "explain",
    "format_path",
    "load",
    "schema",
]


class Loaded(msgspec.Struct, frozen=True):
    """What one `load` found: the stacks, the warnings, and what identifies the revision."""

    stacks: tuple[Stack, ...]  # sorted by name
    warnings: tuple[Problem, ...]
    files: tuple[str, ...]  # every manifest file read (absolute paths), sorted
    content_digest: str  # `discovery.content_digest` of those files
    # per stack name: the variables its manifest saw (the environment over its .env file);
    # configs and secrets with `environment:` read their value from here
    environments: Mapping[str, Mapping[str, str]] = msgspec.field(default_factory=dict)
    # per stack name: the stack as written, with positions
    documents: Mapping[str, StackDocument] = msgspec.field(default_factory=dict)


def load(
    paths: Sequence[str],
    environ: Mapping[str, str] | None = None,
    profiles: Sequence[str] = (),
    file_guard: FileGuard | None = None,
    project_name: str | None = None,
    strict: bool = True,
) -> Loaded:
    """Load every manifest under `paths` (files, or directories searched recursively for
    *.yaml / *.yml). Raises ManifestError listing every error found (not just the first);
    warnings are returned in `Loaded.warnings`. `environ` defaults to os.environ.

    Compose files form projects (see `reconciler.manifest.compose`): a directory holding a
    `compose.yaml` (or `compose.yml`, `docker-compose.yaml`, `docker-compose.yml`) is that one
    project, with its `compose.override.yaml` if there is one, and nothing else below it is
    read; compose files named with `-f` are merged in order into one project, except that a
    file whose `name:` differs from the `name:` of the project so far starts another one.
    `profiles` enables compose profiles (default: `COMPOSE_PROFILES`, comma-separated).

    `file_guard`, when given, is asked before any env file (`env_file:`, `.env`) is read: a
    file it says "skip" for is not read at all (its variables are missing), so that a policy
    can refuse `env_file: /etc/shadow` without its content reaching any message (the caller
    must then report the refusal, as `reconciler.manifest.policy.check` does); one it says "quiet"
    for is read, but a line of it is never quoted in a message.

    A compose project's name is, in compose's order, `project_name` (`-p`), else
    COMPOSE_PROJECT_NAME (the environment, then the `.env` file), else its `name:`, else its
    directory's name; its files see it as `${COMPOSE_PROJECT_NAME}`.

    `strict` off (`config`, `convert`: the files rendered, as compose does) makes the checks
    that only matter to running the stacks warnings: a missing env or secret file, a host
    port published twice."""
    env = dict(os.environ if environ is None else environ)
    loader = _Loader(env, profiles, file_guard)
    loader.project_name = project_name or None
    loader.strict = strict
    return loader.load(paths)


class _Loader(Session):
    """One `load`: reads the files, groups compose files into projects, and builds a stack
    of each document or project. It is also what `compose.Assembler` reads files through
    (the `compose.Files` protocol), so that variables and problems stay in one place."""

    def __init__(
        self,
        environ: dict[str, str],
        profiles: Sequence[str] = (),
        file_guard: FileGuard | None = None,
    ) -> None:
        super().__init__(environ, file_guard)
        self.profiles = [p for given in profiles for p in given.split(",") if p.strip()]
        self.dotenv: dict[str, dict[str, str]] = {}
        self.drafts: list[StackDraft] = []
        self.contents: dict[str, bytes] = {}  # every file read, for the digest
        # documents parsed already, by path, in order (a file may hold several)
        self.preloaded: dict[str, list[yamlpos.Document]] = {}
        self.naming: str | None = None  # the name of the compose project being assembled

    def load(self, paths: Sequence[str]) -> Loaded:
        sources = discover(paths, self.problems)
        parsed: dict[str, list[yamlpos.Document]] = {}
        for source in sorted(sources, key=lambda s: s.path):
            content = self.read(source)
            if content is None:
                continue
            self.contents[source.path] = content
            parsed[source.path] = self.parse(source, content)
            if source.group and not parsed[source.path] and self.clean_parse(source):
                # a file named with -f or a project's compose file: compose refuses it too
                self.problems.append(Problem("empty compose file", Location(source.display, 1, 1)))
        self.documents(sources, parsed)
        check_duplicates(self.drafts)
        check_container_names(self.drafts)
        check_host_ports(self.drafts)
        errors = [p for p in self.problems if p.severity == "error"]
        if errors:
            raise ManifestError(sorted(errors, key=problem_order))
        stacks = sorted((d.stack() for d in self.drafts if d.name), key=lambda s: s.name)
        warnings = sorted((p for p in self.problems if p.severity == "warning"), key=problem_order)
        return Loaded(
            stacks=tuple(stacks),
            warnings=tuple(warnings),
            files=tuple(sorted(self.contents)),
            content_digest=content_digest(self.contents),
            environments={d.name: dict(d.ctx.env) for d in self.drafts if d.name},
            documents={d.name: d.document() for d in self.drafts if d.name},
        )

    # -- files

    def read(self, source: Source) -> bytes | None:
        try:
            return read_file(source.path)
        except Unreadable as e:
            self.problems.append(Problem(str(e), Location(source.display, 1, 1)))
            return None

    def parse(self, source: Source, content: bytes) -> list[yamlpos.Document]:
        docs: list[yamlpos.Document] = []
        if sealed.is_age(content):  # a whole manifest encrypted with age
            from pyapply.reconciler.manifest import sops  # only for a sealed file (startup)

            try:
                content = sops.age_decrypt(content)
            except sops.SopsError as e:
                self.problems.append(Problem(e.message, Location(source.display, 1, 1)))
                return docs
        try:
            text = content.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = content.count(b"\n", 0, e.start) + 1
            self.problems.append(
                Problem("the file is not UTF-8 text", Location(source.display, line, 1))
            )
            return docs
        try:
            for doc in yamlpos.parse(text):
                for (line, column), message in doc.errors:
                    self.problems.append(Problem(message, Location(source.display, line, column)))
                docs.append(doc)
        except yamlpos.YamlSyntaxError as e:
            self.problems.append(Problem(e.message, Location(source.display, e.line, e.column)))
        if docs and all(sealed.has_sops_metadata(d.data) for d in docs):
            # a manifest that is a SOPS file: its values decrypted in place
            from pyapply.reconciler.manifest import sops

            try:
                sops.decrypt_documents(docs, text)
            except sops.SopsError as e:
                self.problems.append(
                    Problem(e.message, Location(source.display, e.line or 1, e.column or 1))
                )
                return []
        return docs

    def clean_parse(self, source: Source) -> bool:
        """No problem was reported in the file (an empty result is then an empty file)."""
        return not any(
            p.location is not None and p.location.file == source.display for p in self.problems
        )

    def documents(
        self, sources: Sequence[Source], parsed: Mapping[str, list[yamlpos.Document]]
    ) -> None:
        """Every document, in the order the paths were given: compose files grouped into
        projects, everything else one document at a time."""
        projects: list[list[tuple[Source, yamlpos.Document]]] = []
        by_group: dict[str, list[tuple[Source, yamlpos.Document]]] = {}
        current_name: str | None = None
        for source in sources:
            docs = parsed.get(source.path, [])
            composes = [d for d in docs if is_compose(d.data)]
            for doc in docs:
                if not is_compose(doc.data):
                    self.document(source, doc)
            if not composes:
                continue
            if len(composes) > 1:
                # a multi-document compose file is one project, its documents merged in order
                projects.append([(source, doc) for doc in composes])
                continue
            if len(docs) > 1 or not source.group:
                projects.extend([(source, doc)] for doc in composes)
                continue
            doc = composes[0]
            if source.group != "-f":
                by_group.setdefault(source.group, []).append((source, doc))
                if len(by_group[source.group]) == 1:
                    projects.append(by_group[source.group])
                continue
            # files named with -f: one project, unless a file names another project
            name = self.declared_name(source, doc)
            group = by_group.get("-f")
            if group is None or (name and current_name and name != current_name):
                group = by_group["-f"] = []
                projects.append(group)
                current_name = None
            group.append((source, doc))
            current_name = name or current_name
        for project in projects:
            self.compose_project(project)

    def declared_name(self, source: Source, doc: yamlpos.Document) -> str | None:
        name = doc.data.get("name") if isinstance(doc.data, dict) else None
        if not isinstance(name, str):
            return None
        try:
            return interpolate(name, self.env_for(source), self.budget).value
        except InterpolationError:
            return name

    def name_project(
        self, env: dict[str, str], entries: list[tuple[Source, yamlpos.Document]]
    ) -> tuple[dict[str, str], str | None]:
        """The variables of a compose project with COMPOSE_PROJECT_NAME set to its name, and
        the name when it is given outside the files (-p, COMPOSE_PROJECT_NAME)."""
        given = self.project_name or env.get("COMPOSE_PROJECT_NAME") or None
        name = given
        if name is None:  # the last file that declares one wins, as in a merge
            declared = [self.declared_name(s, d) for s, d in entries]
            name = next((n for n in reversed(declared) if n), None)
        if name is None:
            name = identity.normalise_stack_name(os.path.basename(entries[0][0].directory))
        return {**env, "COMPOSE_PROJECT_NAME": name}, given

    def compose_project(self, entries: list[tuple[Source, yamlpos.Document]]) -> None:
        first = entries[0][0]
        env, given = self.name_project(self.env_for(first), entries)
        if len(entries) == 1 and self_contained(entries[0][1]):
            # nothing to merge, include, extend or select: the document as it is
            doc = entries[0][1]
            ctx = Context(self, first, doc)
            ctx.env = env
            ctx.project_name = given
            ctx.prepare(doc.data, ())
            self.compose_stack(ctx, [first.path])
            return
        assembler = compose.Assembler(self)
        for source, doc in entries:
            self.preloaded.setdefault(source.path, []).append(doc)
        self.naming = env["COMPOSE_PROJECT_NAME"]
        try:
            root = assembler.project([(s.path, s.display) for s, _ in entries], env)
        finally:
            self.naming = None
        self.preloaded.clear()
        if root is None or not isinstance(root.value, dict):
            return
        enabled = self.profiles or [
            p.strip() for p in env.get("COMPOSE_PROFILES", "").split(",") if p.strip()
        ]
        compose.select_profiles(root, enabled, self)
        ctx = Context(self, first, compose.flatten(root))
        ctx.env = env
        ctx.project_name = given
        self.compose_stack(ctx, list(dict.fromkeys(assembler.read)))

    def compose_stack(self, ctx: Context, sources: list[str]) -> None:
        ctx.base = ()
        ctx.validate("compose")
        data = ctx.doc.data
        if "version" in data:
            ctx.warn(("version",), '"version" is obsolete and ignored', key=True)
        if "models" in data:  # newer than pyapply: AI models served to the services
            ctx.warn(("models",), '"models" is not supported and is ignored', key=True)
        name, name_path = stack_name(ctx, data)
        draft = StackDraft(ctx, name or "", name_path)
        draft.sources = sources
        draft.build(data)
        self.drafts.append(draft)

    # -- what compose.Assembler needs (the compose.Files protocol)

    def load_tree(self, path: str, display: str, env: dict[str, str]) -> compose.Node | None:
        source = Source(display, path)
        queued = self.preloaded.get(path)
        doc = queued.pop(0) if queued else None
        if doc is None:
            content = self.read(source)
            if content is None:
                return None
            self.contents[path] = content
            docs = self.parse(source, content)
            if not docs:
                return None
            doc = docs[0]
            if len(docs) > 1 or not isinstance(doc.data, dict) or "apiVersion" in doc.data:
                self.problems.append(
                    Problem(
                        "an included or extended file must be one compose document",
                        Location(display, *doc.start),
                    )
                )
                return None
        ctx = Context(self, source, doc)
        ctx.env = env
        ctx.prepare(doc.data, ())
        return compose.to_tree(doc, display, path)

    def env_for_dir(
        self, directory: str, display_dir: str, env_files: Sequence[str]
    ) -> dict[str, str]:
        if not env_files:
            return {
                **self.env_for(
                    Source(os.path.join(display_dir, "x"), os.path.join(directory, "x"))
                ),
                **self.project_variable(),
            }
        values: dict[str, str] = {}
        for path in env_files:
            shown = self.display(path)
            if not os.path.exists(path):
                self.problems.append(Problem(f"{shown}: env file does not exist"))
                continue
            # an include's env file: no field of the stack names it, so the loader says
            # itself what the policy made of it
            access = self.access(path, [directory])
            outside = f"{shown}: the env file of an include is outside its directory"
            if access == "skip":
                self.problems.append(Problem(f"{outside}; the policy denies reading it"))
                continue
            if access == "quiet":
                self.problems.append(Problem(outside, severity="warning"))
            values.update(self.dotenv_file(path, shown, access))
        return {**values, **self.environ, **self.project_variable()}

    def project_variable(self) -> dict[str, str]:
        """COMPOSE_PROJECT_NAME for the files of the project being assembled."""
        return {"COMPOSE_PROJECT_NAME": self.naming} if self.naming else {}

    def display(self, path: str) -> str:
        rel = os.path.relpath(path)
        return path if rel.startswith("..") else rel

    def problem(
        self, severity: str, where: compose.Where | None, path: compose.Path, message: str
    ) -> None:
        location = Location(where.display, where.line, where.column) if where else None
        self.problems.append(
            Problem(
                message,
                location,
                format_path(path),
                "warning" if severity == "warning" else "error",
            )
        )

    def dotenv_file(self, path: str, shown: str, access: FileAccess = "read") -> dict[str, str]:
        try:
            text = read_text(path)
        except Unreadable as e:
            self.problems.append(Problem(str(e), Location(shown, 1, 1)))
            return {}
        values, problems = parse_dotenv(text, self.environ, self.budget)
        self.env_problems(problems, shown, access)
        return values

    def env_for(self, source: Source) -> dict[str, str]:
        """The variables for a manifest: the environment over the `.env` file beside it."""
        directory = source.directory
        if directory not in self.dotenv:
            values: dict[str, str] = {}
            path = os.path.join(directory, ".env")
            shown = os.path.join(source.display_dir, ".env")
            if os.path.lexists(path):
                self.dotenv_paths[directory] = path
            # a FIFO or a device there is an error (`dotenv_file` says so); a directory is
            # not meant as one (a virtualenv is often called .env)
            if os.path.exists(path) and not os.path.isdir(path):
                access = self.access(path, [directory])
                if access != "skip":
                    values = self.dotenv_file(path, shown, access)
            self.dotenv[directory] = {**values, **self.environ}
        return self.dotenv[directory]

    # -- documents

    def document(self, source: Source, doc: yamlpos.Document) -> None:
        """A document of its own: a pyapply/v1 Stack, or a compose file read alone."""
        ctx = Context(self, source, doc)
        if not envelope(ctx):
            return
        data = doc.data
        ctx.env = self.env_for(source)
        if ctx.compose:
            ctx.env, ctx.project_name = self.name_project(ctx.env, [(source, doc)])
        ctx.prepare(data, ())
        ctx.validate("compose" if ctx.compose else "stack")
        spec = data if ctx.compose else data.get("spec")
        name, name_path = stack_name(ctx, data)
        draft = StackDraft(ctx, name or "", name_path)
        draft.build(spec if isinstance(spec, dict) else {})
        self.drafts.append(draft)
