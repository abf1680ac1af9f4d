# shellcheck shell=bash
# The on-device contract of imgbuild's first boot: paths, markers and names shared with the build.
# GENERATED from imgbuild/greengrass/src/contract.rs, do not edit: change the Rust constants and run
# IMGBUILD_BLESS=1 cargo test --test contract (that test fails while this file differs).
# The build writes this text into the image itself; the scripts prefix paths with $R.
# shellcheck disable=SC2034
CONTRACT_FIRSTBOOT_DIR=/usr/local/lib/imgbuild/firstboot  # the first-boot scripts
CONTRACT_FIRSTBOOT_SCRIPT=/usr/local/lib/imgbuild/firstboot/imgbuild-firstboot  # the unit's ExecStart
CONTRACT_UNIT_NAME=imgbuild-firstboot.service  # the first-boot unit
CONTRACT_UNIT_PATH=/etc/systemd/system/imgbuild-firstboot.service  # its unit file
CONTRACT_UNIT_LINK=/etc/systemd/system/multi-user.target.wants/imgbuild-firstboot.service  # the link that enables it
CONTRACT_ENV_FILE=/etc/imgbuild/firstboot.env  # the settings (KEY=VALUE)
CONTRACT_CONFIG_TEMPLATE=/etc/imgbuild/greengrass-config.yaml.in  # the installer config with the serial placeholder
CONTRACT_SERIAL_PLACEHOLDER=@SERIAL_NUMBER@  # replaced by the serial number
CONTRACT_STATE_DIR=/var/lib/imgbuild/firstboot  # step markers <step>.done
CONTRACT_WORK_DIR=/var/lib/imgbuild/firstboot/work  # downloads, rendered config
CONTRACT_SERIAL_FILE=/var/lib/imgbuild/firstboot/serial  # the serial number found
CONTRACT_DONE_MARKER=/var/lib/imgbuild/firstboot/done  # provisioned: never run again
CONTRACT_PRESEED_DIR=/var/lib/imgbuild/preseed  # pre-seeded downloads
CONTRACT_PRESEED_DEBS_DIR=/var/lib/imgbuild/preseed/debs  # pre-seeded .debs
CONTRACT_PRESEED_NUCLEUS_NAME=greengrass-nucleus-@VERSION@.zip  # pre-seeded nucleus zip (@VERSION@ = NUCLEUS_VERSION)
CONTRACT_PRESEED_PLUGIN_NAME=fleetprovisioningbyclaim-@VERSION@.jar  # pre-seeded plugin jar (@VERSION@ = PLUGIN_VERSION)
CONTRACT_VERSION_PLACEHOLDER=@VERSION@  # see above
CONTRACT_GG_ROOT=/greengrass/v2  # default GG_ROOT
CONTRACT_CLAIM_CERT_NAME=claim.pem.crt  # claim certificate, under GG_ROOT
CONTRACT_CLAIM_KEY_NAME=claim.private.pem.key  # claim key, under GG_ROOT
CONTRACT_ROOT_CA_NAME=AmazonRootCA1.pem  # default root CA, under GG_ROOT
CONTRACT_CUSTOM_ROOT_CA_NAME=rootCA.pem  # [greengrass] root_ca, under GG_ROOT
CONTRACT_RELEASES_URL=https://d2s8p88vqu9w66.cloudfront.net/releases  # default download base
