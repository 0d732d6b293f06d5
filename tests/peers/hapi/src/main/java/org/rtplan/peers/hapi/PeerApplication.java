package org.rtplan.peers.hapi;

import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.boot.autoconfigure.quartz.QuartzAutoConfiguration;
import org.springframework.boot.autoconfigure.thymeleaf.ThymeleafAutoConfiguration;

/**
 * Minimal HAPI FHIR JPA test peer: FHIR R4, H2 in memory, base path /fhir.
 *
 * <p>Quartz is excluded because HAPI runs its own scheduler; Thymeleaf because HAPI only drags it in
 * for narratives. Everything else is in {@link HapiJpaPeerConfig} and {@link FhirServletConfig}.
 */
@SpringBootApplication(exclude = {QuartzAutoConfiguration.class, ThymeleafAutoConfiguration.class})
public class PeerApplication {

	public static void main(String[] args) {
		SpringApplication.run(PeerApplication.class, args);
	}
}
