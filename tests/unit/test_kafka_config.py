"""Kafka client configuration in one place (streams/kafka_config.py): the settings become the
same security properties for librdkafka, aiokafka and Faust; wrong values are one clear error;
secrets never show; and no Governor client builds its connection anywhere else."""

from __future__ import annotations

import datetime
import re
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from streams.kafka_config import (
    LIBRDKAFKA_LOG,
    KafkaConfigError,
    KafkaSecurity,
    aiokafka_kwargs,
    client_config,
    connection_config,
    faust_credentials,
    security_from_settings,
)
from streams.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SECRET = "pa55-w0rd-never-shown"


def write_ca(folder: Path) -> Path:
    """A self-signed CA certificate (PEM), enough for an SSL context to load."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = folder / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def sasl_env(ca: Path) -> dict[str, str]:
    return {
        "GOVERNOR_BOOTSTRAP": "kafka-1:9093,kafka-2:9093",
        "GOVERNOR_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "GOVERNOR_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "GOVERNOR_KAFKA_USERNAME": "worker",
        "GOVERNOR_KAFKA_PASSWORD": SECRET,
        "GOVERNOR_KAFKA_CA_FILE": str(ca),
    }


def test_plaintext_by_default() -> None:
    config = client_config(Settings(bootstrap="b:1"), {"group.id": "g"})
    assert config == {
        "bootstrap.servers": "b:1",
        "logger": LIBRDKAFKA_LOG,
        "security.protocol": "PLAINTEXT",
        "group.id": "g",
    }
    assert faust_credentials(Settings()) is None
    assert aiokafka_kwargs(Settings(bootstrap="b:1")) == {
        "bootstrap_servers": "b:1",
        "security_protocol": "PLAINTEXT",
    }


def test_sasl_ssl_settings_reach_librdkafka_aiokafka_and_faust(tmp_path: Path) -> None:
    ca = write_ca(tmp_path)
    settings = Settings.from_env(sasl_env(ca))
    config = client_config(settings, {"acks": "all"})
    assert config == {
        "bootstrap.servers": "kafka-1:9093,kafka-2:9093",
        "logger": LIBRDKAFKA_LOG,
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "worker",
        "sasl.password": SECRET,
        "ssl.ca.location": str(ca),
        "acks": "all",
    }
    kwargs = aiokafka_kwargs(settings)
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("worker", SECRET)
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    credentials = faust_credentials(settings)
    assert type(credentials).__name__ == "SASLCredentials"
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert SECRET not in repr(credentials)


def test_mutual_tls_gives_faust_ssl_credentials_and_librdkafka_the_files(tmp_path: Path) -> None:
    ca = write_ca(tmp_path)
    env = {
        "GOVERNOR_KAFKA_SECURITY_PROTOCOL": "SSL",
        "GOVERNOR_KAFKA_CA_FILE": str(ca),
        "GOVERNOR_KAFKA_CERT_FILE": str(ca),
        "GOVERNOR_KAFKA_KEY_FILE": str(ca),
    }
    security = security_from_settings(Settings.from_env(env))
    assert security.librdkafka() == {
        "security.protocol": "SSL",
        "ssl.ca.location": str(ca),
        "ssl.certificate.location": str(ca),
        "ssl.key.location": str(ca),
    }
    only_ca = Settings.from_env({"GOVERNOR_KAFKA_SECURITY_PROTOCOL": "SSL",
                                 "GOVERNOR_KAFKA_CA_FILE": str(ca)})  # fmt: skip
    credentials = faust_credentials(only_ca)
    assert type(credentials).__name__ == "SSLCredentials"
    assert credentials.protocol.value == "SSL"


def test_secrets_are_never_in_a_repr_or_description(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {**sasl_env(write_ca(tmp_path)), "GOVERNOR_KAFKA_KEY_PASSWORD": "key-" + SECRET}
    )
    security = security_from_settings(settings)
    for text in (repr(settings), str(settings), repr(security), security.describe()):
        assert SECRET not in text
    assert "worker" in security.describe()


@pytest.mark.parametrize(
    ("env", "names"),
    [
        (
            {"GOVERNOR_KAFKA_SECURITY_PROTOCOL": "TLS"},
            ["GOVERNOR_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"],
        ),
        (
            {"GOVERNOR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "GOVERNOR_KAFKA_SASL_MECHANISM": "MD5",
             "GOVERNOR_KAFKA_USERNAME": "u", "GOVERNOR_KAFKA_PASSWORD": "p"},
            ["GOVERNOR_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"],
        ),
        (
            {"GOVERNOR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "GOVERNOR_KAFKA_USERNAME": "u"},
            ["GOVERNOR_KAFKA_PASSWORD"],
        ),
        (
            {"GOVERNOR_KAFKA_SECURITY_PROTOCOL": "SSL",
             "GOVERNOR_KAFKA_CA_FILE": "/nonexistent/ca.pem"},
            ["GOVERNOR_KAFKA_CA_FILE", "no such file"],
        ),
        (
            {"GOVERNOR_KAFKA_SASL_MECHANISM": "PLAIN"},
            ["GOVERNOR_KAFKA_SECURITY_PROTOCOL=SASL_SSL"],
        ),
        (
            {"GOVERNOR_KAFKA_PROPERTIES_FILE": "/nonexistent/client.properties"},
            ["GOVERNOR_KAFKA_PROPERTIES_FILE", "cannot be read"],
        ),
    ],
)  # fmt: skip
def test_a_wrong_setting_is_one_error_naming_it_and_the_fix(
    env: dict[str, str], names: list[str]
) -> None:
    with pytest.raises(KafkaConfigError) as raised:
        Settings.from_env(env)
    for name in names:
        assert name in str(raised.value)


def test_a_client_certificate_needs_its_key(tmp_path: Path) -> None:
    ca = write_ca(tmp_path)
    env = {"GOVERNOR_KAFKA_SECURITY_PROTOCOL": "SSL", "GOVERNOR_KAFKA_CERT_FILE": str(ca)}
    with pytest.raises(KafkaConfigError, match="GOVERNOR_KAFKA_KEY_FILE"):
        Settings.from_env(env)


def test_a_properties_file_is_merged_and_the_typed_settings_win(tmp_path: Path) -> None:
    props = tmp_path / "client.properties"
    props.write_text(
        "# a librdkafka file\n"
        "security.protocol=SASL_PLAINTEXT\n"
        "sasl.mechanisms=PLAIN\n"
        "sasl.username=from-file\n"
        f"sasl.password={SECRET}\n"
        "\n"
        "socket.keepalive.enable = true\n"
    )
    settings = Settings.from_env(
        {"GOVERNOR_KAFKA_PROPERTIES_FILE": str(props), "GOVERNOR_KAFKA_USERNAME": "typed"}
    )
    config = client_config(settings)
    assert config["security.protocol"] == "SASL_PLAINTEXT"
    assert config["sasl.mechanism"] == "PLAIN"
    assert "sasl.mechanisms" not in config
    assert (config["sasl.username"], config["sasl.password"]) == ("typed", SECRET)
    assert config["socket.keepalive.enable"] == "true"
    # aiokafka and Faust see the file's security too (the typed view)
    assert aiokafka_kwargs(settings)["sasl_plain_password"] == SECRET
    assert SECRET not in repr(security_from_settings(settings))


def test_a_bad_properties_line_is_named_by_number_never_by_its_text(tmp_path: Path) -> None:
    props = tmp_path / "client.properties"
    props.write_text(f"security.protocol=SASL_SSL\n{SECRET}\n")
    with pytest.raises(KafkaConfigError) as raised:
        Settings.from_env({"GOVERNOR_KAFKA_PROPERTIES_FILE": str(props)})
    assert "line 2" in str(raised.value)
    assert SECRET not in str(raised.value)


def test_connection_config_serves_the_clients_classes() -> None:
    security = KafkaSecurity(protocol="SASL_SSL", sasl_mechanism="PLAIN", username="a",
                             password="b")  # fmt: skip
    assert connection_config("h:1", security, {"x": 1})["sasl.username"] == "a"
    assert connection_config("h:1", None) == {
        "bootstrap.servers": "h:1",
        "logger": LIBRDKAFKA_LOG,
        "security.protocol": "PLAINTEXT",
    }


#: what builds a Kafka client's connection by hand (instead of through streams/kafka_config.py)
RAW_CONNECTION = re.compile(r"""["']bootstrap\.servers["']|\bbootstrap_servers\s*=""")


def test_no_kafka_client_is_configured_outside_the_helper() -> None:
    """Every client must get SASL/TLS: a raw "bootstrap.servers" would connect in plaintext."""
    offenders = []
    for folder in ("streams", "bench"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path == REPO / "streams" / "kafka_config.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if RAW_CONNECTION.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, (
        "Kafka clients configured without streams.kafka_config (use client_config(settings), "
        "connection_config(bootstrap, security) or aiokafka_kwargs(settings)):\n"
        + "\n".join(offenders)
    )


def test_faust_apps_take_the_credentials() -> None:
    """The worker's Faust app gets broker_credentials from the helper."""
    source = (REPO / "streams" / "app.py").read_text()
    assert '"broker_credentials": faust_credentials(settings)' in source
    apps = [p for p in (REPO / "streams").rglob("*.py") if "faust.App(" in p.read_text()]
    assert [p.relative_to(REPO).as_posix() for p in apps] == ["streams/app.py"]
