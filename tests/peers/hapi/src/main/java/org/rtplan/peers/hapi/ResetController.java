package org.rtplan.peers.hapi;

import ca.uhn.fhir.jpa.dao.expunge.IExpungeEverythingService;
import ca.uhn.fhir.jpa.util.MemoryCacheService;
import java.util.Map;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.web.bind.annotation.PostMapping;
import org.springframework.web.bind.annotation.RestController;

/**
 * Test-only reset, outside the FHIR base: {@code POST /peer/reset} deletes every resource, its
 * history and the HFJ_RES_SEARCH_URL rows, then clears HAPI's in-memory caches.
 *
 * <p>FHIR's own {@code $expunge expungeEverything=true} would need {@code allowMultipleDelete=true}
 * (HAPI-2081, checked in the system DAO); the peer keeps multiple delete off as a real server would,
 * so the reset calls HAPI's expunge-everything service directly. Serialised so two resets never
 * interleave; the server binds to 127.0.0.1 only.
 */
@RestController
public class ResetController {

	private static final Logger LOG = LoggerFactory.getLogger(ResetController.class);

	private final IExpungeEverythingService expungeEverythingService;
	private final MemoryCacheService memoryCacheService;

	public ResetController(
			IExpungeEverythingService expungeEverythingService, MemoryCacheService memoryCacheService) {
		this.expungeEverythingService = expungeEverythingService;
		this.memoryCacheService = memoryCacheService;
	}

	@PostMapping("/peer/reset")
	public synchronized Map<String, Object> reset() {
		long start = System.nanoTime();
		expungeEverythingService.expungeEverything(null);
		memoryCacheService.invalidateAllCaches();
		long millis = (System.nanoTime() - start) / 1_000_000;
		LOG.info("Reset: expunged everything in {} ms", millis);
		return Map.of("reset", true, "millis", millis);
	}
}
