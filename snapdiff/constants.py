"""Names defined once: whiteouts, media types, overlay options, xattr namespaces."""

from __future__ import annotations

# --- OCI whiteouts (image-spec layer.md) ---------------------------------------------
WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"
# any other name starting with ".wh..wh." is reserved by the spec
WHITEOUT_META_PREFIX = b".wh..wh."

# --- overlayfs markers ---------------------------------------------------------------
OVERLAY_XATTR_PREFIXES = (b"trusted.overlay.", b"user.overlay.")
OVERLAY_OPAQUE_XATTR = b"trusted.overlay.opaque"
OVERLAY_OPAQUE_XATTR_USER = b"user.overlay.opaque"
OVERLAY_REDIRECT_SUFFIX = b"overlay.redirect"
OVERLAY_METACOPY_SUFFIX = b"overlay.metacopy"
# overlay's whiteout is a character device with rdev 0:0
OVERLAY_WHITEOUT_RDEV = 0

# Options that make the upper directory a complete changeset: no redirects (a renamed
# directory is copied up whole), no metadata-only copy-ups (a chmod copies the data too),
# no inode index.  Stated here and checked after each mount (overlay.check_mount_options).
OVERLAY_MOUNT_OPTIONS = ("index=off", "redirect_dir=off", "metacopy=off")

# --- OCI media types -----------------------------------------------------------------
MEDIA_TYPE_LAYOUT_HEADER = "1.0.0"
MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MEDIA_TYPE_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MEDIA_TYPE_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MEDIA_TYPE_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_MEDIA_TYPE_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_MEDIA_TYPE_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

LAYER_MEDIA_TYPES = {
    "none": MEDIA_TYPE_LAYER,
    "gzip": MEDIA_TYPE_LAYER_GZIP,
    "zstd": MEDIA_TYPE_LAYER_ZSTD,
}

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

# --- xattrs --------------------------------------------------------------------------
XATTR_CAPABILITY = b"security.capability"
